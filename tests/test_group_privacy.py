"""Canaries inserted k times (``canaries.repeat``): the gate bounds per-example ε through k-fold
group privacy (dp_audit.group_privacy), so an honest pipeline is never refuted because its
canaries were repeated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_audit.errors import UsageError
from dp_audit.gate import GatePolicy, ScoreSet, canary_repeat, gate_scores
from dp_audit.group_privacy import group_delta, per_example_bound
from dp_audit.records import EpsilonEstimate


def test_group_delta_closed_form():
    """δ_k = δ·Σ_{i<k} e^{iε}. Bugs caught: δ_k = δ (the group's δ not grown), k·δ at ε > 0,
    a wrong exponent (e^{kε} instead of the geometric sum)."""
    assert group_delta(1.0, 1e-5, 1) == 1e-5
    assert group_delta(1.0, 1e-5, 2) == pytest.approx(1e-5 * (1 + math.e))
    assert group_delta(0.5, 1e-6, 4) == pytest.approx(1e-6 * sum(math.exp(0.5 * i) for i in range(4)))
    assert group_delta(0.0, 1e-6, 4) == pytest.approx(4e-6)
    assert group_delta(50.0, 1e-5, 40) == math.inf or group_delta(50.0, 1e-5, 40) > 1


def _fake(eps_of_delta):
    def at(d: float) -> EpsilonEstimate:
        return EpsilonEstimate(method="fake", epsilon_lb=eps_of_delta(d), alpha=0.05, delta=d, m=1, threshold="x")
    return at


def test_per_example_bound_is_the_crossing_of_the_group_test():
    """A group estimator that ignores δ gives ε_LB^group / k (pure-DP group privacy); one that
    falls with δ gives the ε where ε_LB^group(δ_k(ε)) = kε. Bugs caught: the group bound
    returned as the per-example bound, division by k forgotten, δ_k not used in the search."""
    est = per_example_bound(_fake(lambda d: 3.0), k=3, delta=1e-6)
    assert est.epsilon_lb == pytest.approx(1.0, abs=1e-6)
    assert est.details["group_size"] == 3 and est.details["group_epsilon_lb"] == pytest.approx(3.0)
    f = lambda d: max(0.0, 4.0 + math.log10(d) / 2)  # noqa: E731  (falls as δ grows)
    est = per_example_bound(_fake(f), k=2, delta=1e-8)
    eps = est.epsilon_lb
    assert f(group_delta(eps, 1e-8, 2)) == pytest.approx(2 * eps, abs=1e-6)
    assert eps < 4.0 / 2  # below the δ-free answer: δ_k > δ costs
    assert per_example_bound(_fake(lambda d: 3.0), k=1, delta=1e-6).epsilon_lb == 3.0
    assert per_example_bound(_fake(lambda d: 0.0), k=5, delta=1e-6).epsilon_lb == 0.0
    with pytest.raises(UsageError):
        per_example_bound(_fake(lambda d: 1.0), k=10, delta=0.2)


def _repeated_rr(m: int, k: int, eps: float, rng: np.random.Generator):
    """m canaries, each a member with probability 1/2; each of a member's k copies releases one
    randomised-response bit (1 w.p. e^ε/(1+e^ε)), a non-member's k absent copies release bits
    with the complementary rate: ε-DP per copy (per example), kε-DP for the canary."""
    member = rng.random(m) < 0.5
    p1 = math.exp(eps) / (1 + math.exp(eps))
    bits = rng.random((m, k)) < np.where(member, p1, 1 - p1)[:, None]
    return bits.sum(1) + rng.random(m) * 1e-3, member  # tiny jitter: no exact ties


def test_gate_does_not_refute_an_honest_mechanism_with_repeated_canaries():
    """A mechanism exactly ε = 1-DP per example, canaries inserted 4 times: the group bound alone
    (group_size 1, the old comparison) exceeds ε = 1 and would refute the honest claim; with
    group_size = 4 the per-example ε_LB stays below 1 (pass) yet refutes a false claim ε = 0.2
    (group claim 0.8 < the true 4). Bugs caught: the group's ε compared with a per-example claim
    (spurious refutation of honest DP-SGD with repeat > 1), group_size ignored by the gate or by
    the exposure bound, a conversion so loose it can never refute."""
    scores, member = _repeated_rr(2000, 4, 1.0, np.random.default_rng(7))
    policy = GatePolicy(estimators=("fdp",))
    naive = gate_scores([ScoreSet("rr", scores, member)], claimed_epsilon=1.0, delta=1e-5, policy=policy)
    assert naive.verdict.status == "fail" and naive.verdict.epsilon_lb_max > 1.0
    honest = gate_scores([ScoreSet("rr", scores, member, group_size=4)], claimed_epsilon=1.0, delta=1e-5,
                         policy=policy)
    assert honest.verdict.status == "pass"
    assert 0.3 < honest.verdict.epsilon_lb_max <= 1.0
    est = honest.estimates[0]
    assert est.details["group_size"] == 4 and est.details["group_epsilon_lb"] > 1.0
    false_claim = gate_scores([ScoreSet("rr", scores, member, group_size=4)], claimed_epsilon=0.2, delta=1e-5,
                              policy=policy)
    assert false_claim.verdict.status == "fail"
    exp = gate_scores([ScoreSet("rr", scores * 3, member, exposure=True, group_size=4)], claimed_epsilon=1.0,
                      delta=1e-5, policy=policy)
    assert all(e.details.get("group_size") == 4 for e in exp.estimates)


def test_canary_repeat_is_read_from_the_manifest():
    """Bugs caught: repeat not read (every run treated as repeat 1), a bogus value accepted."""
    assert canary_repeat({"config": {"canaries": {"repeat": 20}}}) == 20
    assert canary_repeat({"config": {}}) == 1 and canary_repeat({}) == 1
    from dp_audit.errors import IntegrityError

    for bad in (0, 1.5, True, "3"):
        with pytest.raises(IntegrityError):
            canary_repeat({"config": {"canaries": {"repeat": bad}}})


@pytest.mark.parametrize("repeat", [1, 4])
def test_evaluate_gate_reads_repeat_from_the_run(tmp_path, repeat):
    """The run directory's ``config.canaries.repeat`` reaches the gate: the same honest scores
    (ε = 1 per example, 4 copies) fail when the run says repeat 1 and pass with repeat 4; a
    ``whitebox-dirac`` attack (gradient canaries, never repeated) keeps group size 1. Bugs caught:
    evaluate_gate not passing repeat on (the spurious refutation through the CLI), Dirac scores
    divided by k."""
    from dp_audit.gate import evaluate_gate
    from dp_audit.io import atomic_write_json, save_npz
    from dp_audit.manifest import write_manifest

    scores, member = _repeated_rr(2000, 4, 1.0, np.random.default_rng(7))
    entries = []
    for name in ("loss", "whitebox-dirac"):
        save_npz(tmp_path / f"scores/{name}.npz", scores=scores, member=member)
        entries.append({"name": name, "auc": 0.5, "scores_file": f"scores/{name}.npz"})
    claim = {"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp", "unaccounted": []}
    atomic_write_json(tmp_path / "audit.json", {"schema_version": 1, "claim": claim, "threat_model": "black-box",
                                                "attacks": entries, "estimates": []})
    write_manifest(tmp_path, kind="train", config={"canaries": {"repeat": repeat}}, seeds={}, claim=claim,
                   artifacts=["scores/loss.npz", "scores/whitebox-dirac.npz", "audit.json"])
    loss_only = evaluate_gate(tmp_path, GatePolicy(attacks=("loss",), estimators=("fdp",)))
    assert loss_only.verdict.status == ("fail" if repeat == 1 else "pass")
    both = evaluate_gate(tmp_path, GatePolicy(estimators=("fdp",)))
    dirac = [e for e in both.estimates if e.attack == "whitebox-dirac"][0]
    assert "group_size" not in dirac.details and dirac.epsilon_lb > 1.0


def test_ceilings_of_canaries_repeated_past_k_delta_1_are_empty_not_a_crash():
    """Review of the merge: with k·δ >= 1 the gate skips the repeated canaries with a warning, but
    the audit's ceiling computation raised a UsageError after all the attack work (audit.json
    never written, the run left pending). Catches that crash."""
    from dp_audit.audit import _ceilings
    from dp_audit.config import AuditConfig

    from dp_audit.records import AttackResult

    loss = [AttackResult(name="loss", auc=0.5, n_members=500, n_nonmembers=500, scores_file="scores/loss.npz")]
    assert _ceilings(1000, AuditConfig(), {"delta": 0.3}, loss, repeat=4) == {}
    assert _ceilings(1000, AuditConfig(), {"delta": 1e-5}, loss, repeat=4)["fdp"] > 0


def test_unbounded_group_estimate_at_delta_0_gives_inf():
    """Review of the merge: with δ = 0 and a group estimate of inf the search doubled ε until it
    overflowed and reported 4.5e307. Catches that (the answer is inf)."""
    import math

    from dp_audit.group_privacy import per_example_bound
    from dp_audit.records import EpsilonEstimate

    est = per_example_bound(lambda d: EpsilonEstimate(method="x", epsilon_lb=math.inf, alpha=0.05, delta=d, m=10,
                                                      threshold="t"), k=3, delta=0.0)
    assert est.epsilon_lb == math.inf


def test_gate_splits_alpha_only_over_the_score_sets_it_gates():
    """Score sets whose canaries are repeated past k·δ >= 1 are skipped with a warning; they are
    not tests, so α is split over the others only. Bug caught: K counted the skipped set too (the
    gate's α per test halved for nothing, a weaker gate; n_tests 2 instead of 1)."""
    from dp_audit.gate import ScoreSet, gate_scores

    rng = np.random.default_rng(3)
    member = rng.random(400) < 0.5
    scores = member + rng.normal(0, 1, 400)
    sets = [ScoreSet(attack="loss", scores=scores, member=member, group_size=1),
            ScoreSet(attack="zlib", scores=scores, member=member, group_size=200_000)]
    res = gate_scores(sets, claimed_epsilon=1.0, delta=1e-5, policy=GatePolicy(estimators=("fdp",)))
    assert res.verdict.n_tests == 1 and res.verdict.alpha_per_test == pytest.approx(0.05)
    assert any("not gated" in w for w in res.warnings)
    assert {e.attack for e in res.estimates} == {"loss"}


def test_ceiling_of_the_dirac_attack_uses_its_own_canaries():
    """The Dirac attack scores the gradient canaries (its own m, never repeated), not the black-box
    text canaries. Bugs caught: the ceiling computed from the text canaries' m (10 here: a ceiling
    far below what 2 000 gradient canaries allow) or divided by their repeat through group
    privacy; and a Dirac attack dropped when the text canaries are repeated past k·δ >= 1."""
    from dp_audit.audit import _ceilings
    from dp_audit.config import AuditConfig
    from dp_audit.estimate import epsilon_ceiling
    from dp_audit.records import AttackResult

    cfg = AuditConfig(estimators=("fdp",))
    loss = AttackResult(name="loss", auc=0.5, n_members=5, n_nonmembers=5, scores_file="scores/loss.npz")
    dirac = AttackResult(name="whitebox-dirac", auc=0.5, n_members=1000, n_nonmembers=1000,
                         scores_file="scores/whitebox-dirac.npz")
    both = _ceilings(10, cfg, {"delta": 1e-5}, [loss, dirac], repeat=4)["fdp"]
    direct = epsilon_ceiling(2000, method="fdp", alpha=0.05 / 2, delta=1e-5, threshold=cfg.threshold,
                             fdp_null=cfg.fdp_null)
    assert both == pytest.approx(direct, rel=1e-9)
    text_only = _ceilings(10, cfg, {"delta": 1e-5}, [loss], repeat=4)["fdp"]
    assert text_only < direct / 4
    # text canaries repeated past k·δ >= 1: the gate skips them, the Dirac attack is the one test
    alone = _ceilings(10, cfg, {"delta": 0.3}, [loss, dirac], repeat=4)["fdp"]
    assert alone == pytest.approx(epsilon_ceiling(2000, method="fdp", alpha=0.05, delta=0.3,
                                                  threshold=cfg.threshold, fdp_null=cfg.fdp_null), rel=1e-9)
