"""Validity of every bound on simulated Gaussian mechanisms (DESIGN.md §6, jax_privacy's test
pattern): members' scores N(μ, 1), non-members' N(0, 1), membership Bernoulli(1/2). Each score
is a μ-GDP release of one canary's membership, so the true ε at δ is the μ-GDP value
(Dong, Roth & Su 2022, Corollary 2.13: dp_audit.estimate.gdp_math.gdp_epsilon).

A valid (1−α) lower bound exceeds the true ε in at most a fraction α of the seeds; we allow three
binomial standard errors. At μ = 0 the bound must be 0 in at least 1 − α of the seeds.
The default run uses m = 200 scores and 500 seeds for every (method, strategy, μ); the slow
run repeats it with m = 1000.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_audit.estimate import estimate_epsilon
from dp_audit.estimate.gdp_math import gdp_epsilon

pytestmark = pytest.mark.statistical

ALPHA, DELTA, SEEDS = 0.05, 1e-5, 500
MUS = (0.0, 0.5, 1.0, 2.0, 4.0)
METHODS = ("steinke", "fdp", "fdp-gdp", "clopper-pearson", "gdp")  # fdp-gdp: method fdp, null "gdp"
COMBOS = [(m, t) for m in METHODS for t in ("bonferroni", "heldout", "fixed")]


def _method(name: str) -> dict:
    return {"method": "fdp", "fdp_null": "gdp"} if name == "fdp-gdp" else {"method": name}


def simulate(method: str, strategy: str, mu: float, m: int, seeds: int = SEEDS) -> np.ndarray:
    out = np.empty(seeds)
    for s in range(seeds):
        rng = np.random.default_rng([s, int(mu * 100), m])
        member = rng.random(m) < 0.5
        scores = rng.normal(mu * member, 1.0)
        kw = {}
        if strategy == "fixed":  # a rule fixed before seeing the data
            kw = {"fixed_k": (m // 8, m // 8)} if method.startswith(("steinke", "fdp")) else {"fixed_threshold": mu / 2}
        out[s] = estimate_epsilon(scores, member, **_method(method), alpha=ALPHA, delta=DELTA, threshold=strategy,
                                  rng=rng, **kw).epsilon_lb
    return out


def check(method: str, strategy: str, m: int) -> None:
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SEEDS)
    for mu in MUS:
        true = gdp_epsilon(DELTA, mu)
        lbs = simulate(method, strategy, mu, m)
        excess = float(np.mean(lbs > true + 1e-9))
        assert excess <= ALPHA + slack, (method, strategy, mu, excess)
        if mu == 0:
            assert np.mean(lbs == 0) >= 1 - ALPHA, (method, strategy, np.mean(lbs == 0))


@pytest.mark.parametrize("method,strategy", COMBOS)
def test_bound_is_valid_m200(method, strategy):
    check(method, strategy, 200)


@pytest.mark.slow
@pytest.mark.parametrize("method,strategy", COMBOS)
def test_bound_is_valid_m1000(method, strategy):
    check(method, strategy, 1000)


def test_uncorrected_search_is_invalid():
    """The check above can fail: the best of all top-k rules reported at the full α (what the
    Bonferroni correction prevents; DESIGN.md §6's ml_privacy_meter example) exceeds ε_true = 0
    far more often than α at μ = 0."""
    from dp_audit.estimate.candidates import RankedCanaries
    from dp_audit.estimate.onerun import steinke_epsilon

    hits = 0
    for s in range(200):
        rng = np.random.default_rng(s)
        member = rng.random(200) < 0.5
        ranked = RankedCanaries.build(rng.normal(size=200), member, rng)
        best = max(steinke_epsilon(m=200, r=k, v=int(ranked.tp_top[k]), alpha=ALPHA, delta=DELTA)
                   for k in range(1, 201))
        hits += best > 0
    assert hits / 200 > ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 200)


# ---------------------------------------------------------------------------------------------
# a pure-ε mechanism: randomized response


def rr_true_epsilon(eps: float, delta: float) -> float:
    """The smallest ε' with randomized response RR_ε (ε, δ)-DP at δ: p − e^{ε'}(1 − p) = δ,
    p = e^ε/(1 + e^ε) (its privacy profile has one atom at the output that matches the bit)."""
    p = math.exp(eps) / (1 + math.exp(eps))
    return math.log((p - delta) / (1 - p))


def rr_bounds(eps: float, m: int, seeds: int, **kw) -> np.ndarray:
    p = math.exp(eps) / (1 + math.exp(eps))
    out = np.empty(seeds)
    for s in range(seeds):
        rng = np.random.default_rng([s, 7, m])
        member = rng.random(m) < 0.5
        keep = rng.random(m) < p  # report the true bit with probability p
        scores = np.where(keep, member, ~member).astype(float)
        out[s] = estimate_epsilon(scores, member, alpha=ALPHA, delta=DELTA, rng=rng, **kw).epsilon_lb
    return out


@pytest.mark.parametrize("method", ["steinke", "fdp"])
def test_bounds_are_valid_for_randomized_response(method):
    """Every canary released by ε-randomized response (pure ε-DP, not Gaussian-shaped): the
    (ε, δ) tests must stay valid. m = 400 canaries, ε = 2, 300 seeds."""
    true = rr_true_epsilon(2.0, DELTA)
    lbs = rr_bounds(2.0, 400, 300, method=method)
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / 300)
    assert np.mean(lbs > true + 1e-9) <= ALPHA + slack
    assert np.median(lbs) > 0.5 * true  # and the audit has power: RR is easy to attack


def test_gdp_null_refutes_a_true_pure_dp_claim():
    """Why the fdp default null is "eps-delta": the μ-GDP null "refutes" randomized response's
    true (ε, δ) claim in most seeds (RR's power at small FPR far exceeds the matching GDP
    curve's). A gate using it would fail a correct Laplace DP-ZO pipeline."""
    true = rr_true_epsilon(2.0, DELTA)
    lbs = rr_bounds(2.0, 400, 40, method="fdp", fdp_null="gdp")
    assert np.mean(lbs > true) > 0.5
