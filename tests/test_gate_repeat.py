"""Canaries inserted ``canaries.repeat`` = r times (issue 16: "inserted k times"): the neighbour of a
member canary differs in r records, so its scores can refute only the group claim
(rε, r·e^{(r−1)ε}·δ) (Dwork & Roth 2014, group privacy). Review of lm16b: the gate compared their
bounds with the per-record claim and refuted correct DP runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_audit.errors import IntegrityError
from dp_audit.estimate.gdp_math import gdp_mu
from dp_audit.gate import ScoreSet, canary_repeat, gate_scores, group_claim


def test_a_true_claim_with_repeated_canaries_is_not_refuted():
    """A mechanism that is exactly (2, 1e-5)-DP per record (μ-GDP, μ = 0.50) and canaries
    inserted 4 times (member scores N(4μ, 1)): over 20 audits of m = 1000 canaries, the gate
    refutes the true claim in none (≤ α expected). Bug caught: bounds compared with the
    per-record claim (it refuted 20 of 20 before the fix), or computed at the per-record δ."""
    eps, delta, r, m = 2.0, 1e-5, 4, 1000
    mu = gdp_mu(eps, delta)
    refuted = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        member = rng.random(m) < 0.5
        scores = rng.normal(size=m) + member * r * mu
        res = gate_scores([ScoreSet(attack="loss", scores=scores, member=member, group=r)],
                          claimed_epsilon=eps, delta=delta)
        refuted += res.verdict.status == "fail"
        est = res.estimates[0]
        g = est.details["group"]
        assert g["repeat"] == r and est.delta == pytest.approx(group_claim(eps, delta, r)[1])
        assert est.epsilon_lb == pytest.approx(g["epsilon_lb_group"] / r)
    assert refuted <= 2


def test_repeated_canaries_still_refute_a_false_claim():
    """Power is kept where it should be: a non-private-like leak (member scores N(8, 1), 4 copies)
    refutes a claim of ε = 0.5 per record. Bug caught: repeat > 1 silently disabling the gate."""
    rng = np.random.default_rng(0)
    member = rng.random(1000) < 0.5
    scores = rng.normal(size=1000) + member * 8.0
    res = gate_scores([ScoreSet(attack="loss", scores=scores, member=member, group=4)], claimed_epsilon=0.5,
                      delta=1e-5)
    assert res.verdict.status == "fail"


def test_group_claim_closed_form_and_repeat_from_the_manifest():
    """(kε, k e^{(k−1)ε} δ) exactly; r read from a dp-audit run's canaries.repeat (external runs: 1).
    Bugs caught: δ not scaled by e^{(k−1)ε}; repeat read from the wrong key; a bogus repeat
    accepted instead of exit 3."""
    assert group_claim(1.0, 1e-5, 1) == (1.0, 1e-5)
    eps_g, delta_g = group_claim(1.0, 1e-5, 3)
    assert eps_g == 3.0 and delta_g == pytest.approx(3 * math.exp(2.0) * 1e-5)
    assert canary_repeat({"kind": "train", "config": {"canaries": {"repeat": 4}}}) == 4
    assert canary_repeat({"kind": "train", "config": {"canaries": {}}}) == 1
    assert canary_repeat({"kind": "external", "config": {"model": {}}}) == 1
    for bad in (0, 2.5, "4", True):
        with pytest.raises(IntegrityError):
            canary_repeat({"kind": "train", "config": {"canaries": {"repeat": bad}}})
