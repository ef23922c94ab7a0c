"""Canaries inserted ``canaries.repeat`` = r times (issue 16: "inserted k times"): the neighbour of a
member canary differs in r records, so its scores can refute only the group claim
(rε, δ_r) (group privacy; dp_audit.group_privacy). Review of lm16b: the gate compared their
bounds with the per-record claim and refuted correct DP runs. (Merged with the review of lm16a,
which fixed the same defect with the claim-free per-example bound that the gate now uses.)
"""

from __future__ import annotations

import numpy as np
import pytest

from dp_audit.errors import IntegrityError
from dp_audit.estimate.gdp_math import gdp_mu
from dp_audit.gate import ScoreSet, canary_repeat, gate_scores


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
        res = gate_scores([ScoreSet(attack="loss", scores=scores, member=member, group_size=r)],
                          claimed_epsilon=eps, delta=delta)
        refuted += res.verdict.status == "fail"
        est = res.estimates[0]
        assert est.details["group_size"] == r and est.delta == delta
        assert est.epsilon_lb <= est.details["group_epsilon_lb"] / r + 1e-9
    assert refuted <= 2


def test_repeated_canaries_still_refute_a_false_claim():
    """Power is kept where it should be: a non-private-like leak (member scores N(8, 1), 4 copies)
    refutes a claim of ε = 0.5 per record. Bug caught: repeat > 1 silently disabling the gate."""
    rng = np.random.default_rng(0)
    member = rng.random(1000) < 0.5
    scores = rng.normal(size=1000) + member * 8.0
    res = gate_scores([ScoreSet(attack="loss", scores=scores, member=member, group_size=4)], claimed_epsilon=0.5,
                      delta=1e-5)
    assert res.verdict.status == "fail"


def test_repeat_from_the_manifest():
    """r read from a dp-audit run's canaries.repeat (external runs: 1). Bugs caught: repeat read
    from the wrong key; a bogus repeat accepted instead of exit 3."""
    assert canary_repeat({"kind": "train", "config": {"canaries": {"repeat": 4}}}) == 4
    assert canary_repeat({"kind": "train", "config": {"canaries": {}}}) == 1
    assert canary_repeat({"kind": "external", "config": {"model": {}}}) == 1
    for bad in (0, 2.5, "4", True):
        with pytest.raises(IntegrityError):
            canary_repeat({"kind": "train", "config": {"canaries": {"repeat": bad}}})
