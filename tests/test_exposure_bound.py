"""The Secret Sharer exposure bound P[exposure >= k] <= e^ε·2^(−k) + δ (dp_audit.attacks.exposure):
validity on null and Gaussian-mechanism simulations, and that it refutes a false claim.

Simulation (the relation's own setting): each canary's loss and its K candidates' losses; under
OUT the canary is exchangeable with the candidates (all N(0, 1)); under IN the canary's loss is
N(−μ, 1): a μ-GDP mechanism on the canary, so (ε(μ, δ), δ)-DP with ε(μ, δ) from
``dp_audit.estimate.gdp_math`` (Dong, Roth & Su 2022). Over many seeds the fraction of bounds
above the true ε must be <= α (+ 3 binomial standard errors).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_audit.attacks.exposure import exposure_epsilon_bound, exposure_from_losses

ALPHA, DELTA, M, K = 0.05, 1e-5, 64, 1023


def simulate(mu: float, *, seed: int, m: int = M, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    loss = rng.normal(size=m) - mu * member
    cand = rng.normal(size=(m, k))
    return exposure_from_losses(loss, cand), member


def violation_rate(mu: float, eps_true: float, trials: int) -> float:
    bad = 0
    for seed in range(trials):
        e, member = simulate(mu, seed=seed)
        bad += exposure_epsilon_bound(e, member=member, delta=DELTA, alpha=ALPHA).epsilon_lb > eps_true + 1e-9
    return bad / trials


def test_null_bound_is_zero_in_at_least_1_minus_alpha_of_trials():
    trials = 400
    rate = violation_rate(0.0, 0.0, trials)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials), rate


@pytest.mark.parametrize("mu", [1.0, 2.0])
def test_valid_on_gaussian_mechanism(mu):
    from dp_audit.estimate.gdp_math import gdp_epsilon

    trials = 300
    rate = violation_rate(mu, float(gdp_epsilon(DELTA, mu)), trials)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials), rate


def test_refutes_a_false_claim_when_members_are_memorised():
    e, member = simulate(20.0, seed=0, k=4095)  # every member ranks first among 4096
    est = exposure_epsilon_bound(e, member=member, delta=DELTA, alpha=ALPHA)
    grid = [int(j) for j in est.details["per_j"]]
    m = int(member.sum())
    # every member at the maximum exposure log2(4096): the largest j of the grid gives the bound
    expected = math.log(4096) + math.log(max(grid) * ALPHA / (len(grid) * m) - DELTA)
    assert est.epsilon_lb == pytest.approx(expected, abs=1e-9)
    assert est.epsilon_lb > 3.0  # a claim of ε = 1 (or 3) is refuted
    assert est.is_bound and est.method == "exposure"


def test_bound_never_exceeds_its_ceiling():
    for seed in range(20):
        e, member = simulate(3.0, seed=seed, k=255)
        est = exposure_epsilon_bound(e, member=member, delta=DELTA, alpha=ALPHA)
        assert est.epsilon_lb <= math.log(256) + math.log(ALPHA / len(est.details["per_j"])) + 1e-9  # j/m <= 1


def test_an_uncorrected_binomial_reading_would_be_invalid():
    """Control: treating the j-th largest exposure at the full α without the Markov/|J| correction
    (ε = k·ln2 + ln(α/m) with α not split) overshoots the null more often than α; the
    procedure above does not (test_null_bound...)."""
    trials, bad = 400, 0
    for seed in range(trials):
        e, member = simulate(0.0, seed=seed)
        desc = np.sort(e[member])[::-1]
        m = desc.size
        best = max(desc[j - 1] * math.log(2) + math.log(j * ALPHA / m * 8) for j in range(1, m + 1))
        bad += best > 0
    assert bad / trials > ALPHA
