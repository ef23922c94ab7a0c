"""One-run bounds from guess counts: m canaries, r guesses, v of them right.

- ``steinke``: Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training Run"
  (NeurIPS, arXiv 2305.08846), Theorem 3.1 / Proposition 5.2: with q = 1/(1+e^{−ε}),
  β = P[Bin(r, q) ≥ v], a = max_{i=1..v} (1/i)·P[v−i ≤ Bin(r, q) < v] and p(ε) = min(1, β + 2mδ·a),
  (ε, δ)-DP is rejected at level α when p(ε) < α; ε_LB is the largest such ε.
- ``fdp``: Mahloujifar, Melis & Chaudhuri 2024, "Auditing f-Differential Privacy in One Run"
  (arXiv 2410.22235, ICML 2025), the recursive bound on the number of correct guesses of an
  f-DP mechanism. Their theorem holds for any trade-off function f; two nulls are offered:
  ``null="eps-delta"`` (default): f = f_{ε,δ}(x) = max(0, 1−δ−e^ε x, e^{−ε}(1−δ−x)), the trade-off
  curve of (ε, δ)-DP itself, so the test is valid for *every* (ε, δ)-DP mechanism;
  ``null="gdp"``: f = the μ-GDP curve, "the mechanism is μ-GDP", reported as the ε at δ of the
  largest rejected μ. The GDP null is much tighter but refutes only μ-GDP: a pure-ε mechanism
  (randomized response, Laplace) that keeps its (ε, δ) claim can be "refuted" by it
  (tests/test_estimate_validity.py shows it; docs/estimators.md).

Both are pure functions of (m, r, v, α, δ), cached, so simulations over many seeds that produce
the same counts cost nothing extra.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import optimize, special

from dp_audit.estimate.gdp_math import gdp_epsilon, gdp_mu

_EPS_HI = 200.0


def _log_binom_pmf(k: int, r: int, q: float) -> float:
    return float(special.gammaln(r + 1) - special.gammaln(k + 1) - special.gammaln(r - k + 1)
                 + k * math.log(q) + (r - k) * math.log1p(-q))


def steinke_pvalue(epsilon: float, *, m: int, r: int, v: int, delta: float) -> float:
    """p-value of the hypothesis "(ε, δ)-DP" given v correct out of r guesses on m canaries.

    a = max_i (1/i) P[v−i <= X <= v−1], X ~ Bin(r, q), is computed exactly on the window of k
    within 12 standard deviations of the mean and bounded from above outside it (p is never
    under-estimated): above the window, pmf is decreasing, so a window of i terms there averages
    at most pmf(k_hi + 1) and adds at most P[X > k_hi] to longer windows; below it, windows longer
    than v − lo average at most P[X <= v − 1] / (v − lo + 1). The window costs O(sd) = O(√r)
    whatever v is (tests/test_estimate_reference.py checks it against the direct sum).
    """
    if v <= 0 or r <= 0:
        return 1.0
    q = float(special.expit(epsilon))
    beta = float(special.bdtrc(v - 1, r, q))  # P[Bin(r, q) >= v]
    if delta == 0 or beta >= 1.0 or q >= 1.0:  # q = 1: X = r >= v, no window below v has mass
        return min(1.0, beta)
    mean, sd = r * q, math.sqrt(r * q * (1 - q))
    lo = max(0, int(math.floor(mean - 12 * sd)) - 1)
    below_v = float(special.bdtr(v - 1, r, q))  # P[X <= v-1]
    if lo >= v:
        a = below_v
    else:
        # the mode is <= mean + 1, so pmf decreases above k_hi
        k_hi = min(v - 1, max(lo, int(math.ceil(mean + 12 * sd)) + 1))
        n_top = v - 1 - k_hi
        # pmf(k_hi), ..., pmf(lo) by the ratio pmf(k-1)/pmf(k) = k(1-q) / ((r-k+1) q), in log space
        ks = np.arange(k_hi, lo - 1, -1, dtype=float)
        log_ratio = np.log(ks[:-1]) + math.log1p(-q) - np.log(r - ks[:-1] + 1) - math.log(q)
        log_pmf = _log_binom_pmf(k_hi, r, q) + np.concatenate([[0.0], np.cumsum(log_ratio)])
        sums = np.cumsum(np.exp(log_pmf))
        if n_top > 0:
            top_mass = float(special.bdtrc(k_hi, r, q))  # >= P[k_hi < X <= v-1]
            a = max(math.exp(_log_binom_pmf(k_hi + 1, r, q)),
                    float(np.max((top_mass + sums) / np.arange(n_top + 1, n_top + ks.size + 1))))
        else:
            a = float(np.max(sums / np.arange(1, ks.size + 1)))
        if lo > 0:
            a = max(a, below_v / (v - lo + 1))
        a *= 1 + 1e-9  # rounding: never under-estimate p
    return min(1.0, beta + 2 * m * delta * a)


def _largest_rejected(rejects, hi0: float = 1.0) -> float:
    """Largest x >= 0 with rejects(x) for a predicate true on [0, x*) and false after."""
    if not rejects(0.0):
        return 0.0
    lo, hi = 0.0, hi0
    while rejects(hi):
        lo, hi = hi, hi * 2
        if hi > _EPS_HI:
            return math.inf
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if rejects(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-7 * max(1.0, lo):
            break
    return lo


@functools.lru_cache(maxsize=200_000)
def steinke_epsilon(*, m: int, r: int, v: int, alpha: float, delta: float) -> float:
    """ε_LB of Steinke et al. 2023: the largest ε with p(ε) < α (0 when none)."""
    if v <= 0 or r <= 0:
        return 0.0
    f = lambda e: steinke_pvalue(e, m=m, r=r, v=v, delta=delta) - alpha  # noqa: E731
    if f(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while f(hi) < 0:
        lo, hi = hi, hi * 2
        if hi > _EPS_HI:
            return math.inf
    return float(optimize.brentq(f, lo, hi, xtol=1e-7))


def steinke_rejects(epsilon: float, *, m: int, r: int, v: int, alpha: float, delta: float) -> bool:
    return steinke_pvalue(epsilon, m=m, r=r, v=v, delta=delta) < alpha


# ---------------------------------------------------------------------------------------------
# f-DP, Mahloujifar et al. 2024: GDP null and (ε, δ) null

FDP_NULLS = ("eps-delta", "gdp")


def _gdp_inverse_tradeoff(mu: float):
    """x -> Φ(Φ⁻¹(x) − μ) = T_μ(1 − x), with T_μ the μ-GDP trade-off curve: the function the
    recursion pushes mass through (μ = 0: the identity; μ = ∞: 0 except at x = 1)."""
    if math.isinf(mu):
        return lambda x: 1.0 if x >= 1.0 else 0.0
    ndtr, ndtri = special.ndtr, special.ndtri
    return lambda x: float(ndtr(ndtri(min(max(x, 0.0), 1.0)) - mu))


def _eps_delta_inverse_tradeoff(epsilon: float, delta: float):
    """x -> f_{ε,δ}(1 − x) = max(0, 1 − δ − e^ε (1 − x), e^{−ε} (x − δ)), with f_{ε,δ} the
    trade-off curve of (ε, δ)-DP (Kairouz et al. 2015; Dong, Roth & Su 2022, Prop. 2.5)."""
    e = math.exp(min(epsilon, 700.0))
    return lambda x: max(0.0, 1.0 - delta - e * (1.0 - x), (x - delta) / e)


def fdp_rejects_curve(g, *, m: int, r: int, v: int, alpha: float) -> bool:
    """Does v correct out of r guesses on m canaries reject "f-DP" at level α, with
    g(x) = f(1 − x)?

    The recursion of Mahloujifar et al. 2024 (their bound on the probability of at least v
    correct guesses of an f-DP mechanism, run backwards from the last correct guess): start with
    mass α·v/m on "correct" and α·(r−v)/m on "wrong" and push it through the trade-off curve;
    f-DP is rejected when the mass that the curve forces exceeds r/m.
    """
    if v <= 0 or r <= 0:
        return False
    right = alpha * v / m
    wrong = alpha * (r - v) / m
    for i in range(v - 1, -1, -1):
        new_wrong = max(wrong, g(right))
        if new_wrong == wrong:
            break  # a fixed point: neither quantity moves again
        right = min(right + (i / (r - i)) * (new_wrong - wrong), 1.0)
        wrong = new_wrong
    return right + wrong > r / m


def fdp_rejects_mu(mu: float, *, m: int, r: int, v: int, alpha: float) -> bool:
    """Does v correct out of r guesses on m canaries reject "μ-GDP" at level α?"""
    return fdp_rejects_curve(_gdp_inverse_tradeoff(mu), m=m, r=r, v=v, alpha=alpha)


def fdp_rejects_eps_delta(epsilon: float, *, m: int, r: int, v: int, alpha: float, delta: float) -> bool:
    """Does v correct out of r guesses reject "(ε, δ)-DP" at level α (f = f_{ε,δ})?"""
    return fdp_rejects_curve(_eps_delta_inverse_tradeoff(epsilon, delta), m=m, r=r, v=v, alpha=alpha)


@functools.lru_cache(maxsize=200_000)
def fdp_mu(*, m: int, r: int, v: int, alpha: float) -> float:
    """μ_LB: the largest μ rejected by the one-run f-DP test (0 when none)."""
    return _largest_rejected(lambda mu: fdp_rejects_mu(mu, m=m, r=r, v=v, alpha=alpha), hi0=1.0)


def _check_null(null: str) -> None:
    if null not in FDP_NULLS:
        from dp_audit.errors import UsageError

        raise UsageError(f"fdp null must be one of {', '.join(FDP_NULLS)}, got {null!r}")


@functools.lru_cache(maxsize=200_000)
def fdp_epsilon(*, m: int, r: int, v: int, alpha: float, delta: float, null: str = "eps-delta") -> float:
    """ε_LB of the one-run f-DP audit: the largest ε whose (ε, δ) curve is rejected
    (``null="eps-delta"``), or the ε at δ of the largest rejected μ-GDP curve (``"gdp"``)."""
    _check_null(null)
    if null == "eps-delta":
        return _largest_rejected(lambda e: fdp_rejects_eps_delta(e, m=m, r=r, v=v, alpha=alpha, delta=delta))
    mu = fdp_mu(m=m, r=r, v=v, alpha=alpha)
    if mu <= 0:
        return 0.0
    return gdp_epsilon(delta, mu)


def fdp_rejects(epsilon: float, *, m: int, r: int, v: int, alpha: float, delta: float,
                null: str = "eps-delta") -> bool:
    _check_null(null)
    if null == "eps-delta":
        return fdp_rejects_eps_delta(max(epsilon, 0.0), m=m, r=r, v=v, alpha=alpha, delta=delta)
    return fdp_rejects_mu(gdp_mu(epsilon, delta), m=m, r=r, v=v, alpha=alpha) if epsilon > 0 else \
        fdp_rejects_mu(0.0, m=m, r=r, v=v, alpha=alpha)
