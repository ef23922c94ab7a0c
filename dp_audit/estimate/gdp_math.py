"""μ-GDP (Dong, Roth & Su 2022, arXiv 1905.02383, Corollary 2.13): its (ε, δ) curve and inverses.

δ(ε; μ) = Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2).

These are the ground truth of the validity tests (members N(μ, 1) against non-members N(0, 1) is
exactly μ-GDP), the last step of the ``gdp`` bound and the null curve of the ``fdp`` bound.
Computed in the log domain so that tiny δ (1e-10) and large ε stay accurate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

_EPS_MAX = 1e3


def _log_delta(epsilon: float, mu: float) -> float:
    """log δ(ε; μ) for μ > 0 (−inf when δ underflows)."""
    a = special.log_ndtr(-epsilon / mu + mu / 2)
    b = epsilon + special.log_ndtr(-epsilon / mu - mu / 2)
    if b >= a:
        return -math.inf
    return float(a + math.log1p(-math.exp(b - a)))


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ of a μ-GDP mechanism at ε (ε ≥ 0)."""
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    return math.exp(_log_delta(float(epsilon), float(mu)))


def gdp_epsilon(delta: float, mu: float) -> float:
    """The smallest ε ≥ 0 such that a μ-GDP mechanism is (ε, δ)-DP."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    log_d = math.log(delta)
    if _log_delta(0.0, mu) <= log_d:
        return 0.0
    hi = max(1.0, mu * mu)
    while _log_delta(hi, mu) > log_d:
        hi *= 2
        if hi > _EPS_MAX:
            return math.inf
    return float(optimize.brentq(lambda e: _log_delta(e, mu) - log_d, 0.0, hi, xtol=1e-10, rtol=1e-12))


def gdp_mu(epsilon: float, delta: float) -> float:
    """The μ whose μ-GDP curve passes through (ε, δ): the largest μ with δ(ε; μ) ≤ δ."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if math.isinf(epsilon):
        return math.inf
    log_d = math.log(delta)
    hi = 1.0
    while _log_delta(epsilon, hi) < log_d:
        hi *= 2
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(lambda mu: _log_delta(epsilon, mu) - log_d, 1e-12, hi, xtol=1e-12, rtol=1e-13))


def gdp_mu_from_rates(fpr: np.ndarray, fnr: np.ndarray) -> np.ndarray:
    """μ implied by one (FPR, FNR) pair of a test: Φ⁻¹(1 − FPR) − Φ⁻¹(FNR) (Dong et al. Eq. 6)."""
    return special.ndtri(1 - np.asarray(fpr, dtype=float)) - special.ndtri(np.asarray(fnr, dtype=float))


# short aliases
delta_of = gdp_delta


def epsilon_of(mu: float, delta: float) -> float:
    return gdp_epsilon(delta, mu)


__all__ = ["gdp_delta", "gdp_epsilon", "gdp_mu", "gdp_mu_from_rates", "delta_of", "epsilon_of"]
