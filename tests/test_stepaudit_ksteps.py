"""k-step audits (issue 17 leftovers): k consecutive steps per trial, the claim their composition."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
from scipy import stats

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.compose import compose_claim, pld_laplace_epsilon
from dp_audit.stepaudit.constructions import build
from dp_audit.stepaudit.output import check_consistent, read_step_audit
from dp_audit.stepaudit.trials import run_trials

DELTA = 1e-5

# Single-step results of the code before k-step audits existed (commit 7153e7e), N = 400 per side,
# seed 3 (batched), and 60 per side unbatched: sha256 of the concatenated float64 scores, and ε_LB.
OLD = {
    "dpsgd-dirac": ("b29a33c42bbc7e19426dbaa0ae44c95d3a855deef2c3bea9f397f18e97d342bf", [0.0, 0.0],
                    "b9c64c9eab0c718759433daa05ac3dfe26635bce52e989652cd380950a26de60"),
    "dpflat-awp-paper": ("58d7279be4d4f79657f4c838f9ee3840213dd8d9c9f8ca981ec2adf1f123ccc6",
                         [4.402490267947771, 28.685693596974225],
                         "364cab5a1e99cb33f8b86820ac679335dc9c1eca9a9fae427db83426f7413021"),
    "dpzo-laplace": ("da4ca35024a9ec5262d4682dbf9439937164c96982660e55a0627a8c08d322fe", [0.0],
                     "4486627596a6bae8dc940162a19a06d5bb8722f0f03a44c71e5b2ab60f305270"),
}


def _sha(res) -> str:
    return hashlib.sha256(np.concatenate([res.scores_d0, res.scores_d1]).tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(OLD))
def test_one_step_is_the_old_single_step_result_byte_for_byte(name):
    """Bug caught: steps=1 routed through the k-step loop (advance, a different generator use, the
    release re-summed) or a changed default state/construction (e.g. the k-step start offset or
    repelling kinks leaking into the one-step builders): the scores would differ from the
    single-step audit's. Seen failing when dirac_start returned the k-step offset for k = 1."""
    sha, eps, sha_unbatched = OLD[name]
    res = step_audit(build(name), trials=400, seed=3, progress=False, steps=1)
    assert _sha(res) == sha
    assert [e.epsilon_lb for e in res.estimates] == eps
    assert res.steps == 1 and res.to_dict()["claim"] == {"epsilon": res.claim_epsilon, "delta": DELTA,
                                                         "mu": res.claim_mu, "per": "step"}
    res = step_audit(build(name), trials=60, seed=3, progress=False, batched=False)
    assert _sha(res) == sha_unbatched


def test_composed_claims_match_closed_forms():
    """Bugs caught: μ composed linearly (k·μ) instead of √k·μ; the Laplace PLD event given ε0
    instead of scale/sensitivity = 1/ε0 (visible at ε0 ≠ 1); k ignored. Closed forms: k Gaussian
    steps are √k·μ-GDP; one Laplace step has δ(ε) = 1 − e^{(ε−ε0)/2}, i.e. ε(δ) = ε0 + 2·ln(1−δ);
    k pure ε0 steps are at most k·ε0 (basic composition). Seen failing with noise_multiplier=ε0."""
    c = compose_claim(epsilon=gdp_epsilon(DELTA, 0.5), delta=DELTA, mu=0.5, laplace_epsilon=None, steps=9)
    assert c.mu == pytest.approx(1.5) and c.epsilon == pytest.approx(gdp_epsilon(DELTA, 1.5), rel=1e-12)
    assert c.pld_epsilon == pytest.approx(c.epsilon, rel=1e-3)  # dp-accounting's PLD agrees
    for eps0 in (0.5, 2.0):
        assert pld_laplace_epsilon(eps0, 1, DELTA) == pytest.approx(eps0 + 2 * math.log(1 - DELTA), abs=2e-3)
        e3 = compose_claim(epsilon=eps0, delta=DELTA, mu=None, laplace_epsilon=eps0, steps=3).epsilon
        assert 2 * eps0 < e3 <= 3 * eps0 + 1e-9
    one = compose_claim(epsilon=1.0, delta=DELTA, mu=None, laplace_epsilon=1.0, steps=1)
    assert (one.epsilon, one.accountant) == (1.0, "per-step")
    with pytest.raises(UsageError, match="composable"):
        compose_claim(epsilon=1.0, delta=DELTA, mu=None, laplace_epsilon=None, steps=2)


def test_replica_batched_k_steps_have_the_distribution_of_real_k_steps():
    """Bug caught: the replica batch is not k independent DP-SGD runs (the sum divided by the
    whole batch m·B instead of B: the canary's shift 4C/B shrinks; replicas sharing rows or noise:
    the std changes; the state not advanced between steps). Checked: mean ≈ k·C/B (d1) and 0
    (d0), std ≈ σC√k/B, and a KS test against trials through step_fn + advance. Seen failing
    with expected_batch_size = m·B in ReplicaSteps."""
    cons = build("dpsgd-dirac", steps=4)
    b = run_trials(cons, trials=1000, seed=1, steps=4, progress=False)
    u = run_trials(cons, trials=150, seed=2, steps=4, progress=False, batched=False)
    assert b.batched and not u.batched
    for side, mean in (("d0", 0.0), ("d1", 4 / 8)):
        x, y = getattr(b, side), getattr(u, side)
        assert abs(x.mean() - mean) < 5 * 0.25 / math.sqrt(x.size)
        assert x.std() == pytest.approx(0.25, rel=0.08)
        assert stats.ks_2samp(x, y).pvalue > 1e-3


def test_dpsgd_dirac_four_steps_never_above_the_composed_claim():
    """Validity over 20 seeds: ε_LB of 4 DP-SGD steps (Dirac canary, batched over replicas) never
    exceeds the 4-step claim (2/σ-GDP). Bug caught: a claim computed for 1 step instead of 4
    (4.38 instead of 10.0): the tight audit gives ε_LB ≈ 9 > 4.38, every seed refutes; also noise
    not independent across replicas/steps. Seen failing when compose_claim returned the per-step
    claim for k > 1."""
    cons = build("dpsgd-dirac", steps=4)
    worst = 0.0
    for seed in range(20):
        res = step_audit(cons, trials=500, seed=1000 + seed, progress=False, steps=4)
        assert not res.refuted, (seed, res.eps_lb, res.claim_epsilon)
        assert res.claim_mu == 2.0 and res.claim_epsilon == pytest.approx(gdp_epsilon(DELTA, 2.0))
        worst = max(worst, res.eps_lb)
    assert worst > gdp_epsilon(DELTA, 1.0)  # the audit has the power to catch a one-step claim


def test_dpsgd_dirac_four_steps_is_tight():
    """Tightness ε_LB / ε_true(4) ≥ 0.8 at N = 10⁴ (measured 0.96–0.97 over 4 seeds). Bug caught:
    the canary leaving clipping in later steps (P[e0] started at 0: its gradient vanishes as the
    canary's descent moves P[e0] negative, the sum differs by less than 4C), or the statistic
    seeing only the last step's update. Seen failing (0.65) with start=0.0."""
    res = step_audit(build("dpsgd-dirac", steps=4), trials=10_000, seed=0, progress=False, steps=4)
    assert res.eps_lb / res.claim_epsilon >= 0.8
    assert not res.refuted


def test_awp_paper_three_steps_refuted_private_variant_not():
    """Bug caught: k-step trials that drop the canary after the first step or reset the state
    (paper-mode AWP's leak would then not accumulate), or a k-step claim so loose that nothing is
    refuted. Paper mode over 3 steps must refute √3/σ-GDP; DP-SAT (DP-correct) must not. Seen
    failing (not refuted, ε_LB 0) with the one-step kinks, whose descent pulls P back to the kink
    and undoes the first step's leak in the sum; the k-step builder uses repelling kinks."""
    res = step_audit(build("dpflat-awp-paper", steps=3), trials=200, seed=0, progress=False, steps=3)
    assert res.steps == 3 and res.claim_mu == pytest.approx(math.sqrt(3))
    assert res.refuted
    res = step_audit(build("dpflat-awp-dpsat", steps=3), trials=200, seed=0, progress=False, steps=3)
    assert not res.refuted


def test_k_step_record_is_checked_and_unsupported_constructions_refused(tmp_path):
    """Bugs caught: a k-step directory whose claim is the one-step claim (or another k's) read
    back without complaint (the gate would then compare a k-step ε_LB with the wrong claim); k
    not recorded in step_audit.json/manifest; a construction without ``advance`` silently run
    as k independent single steps. Seen failing with _check_composition removed."""
    res = step_audit(build("dpzo-laplace"), trials=200, seed=0, progress=False, steps=2, out=tmp_path / "z")
    back = read_step_audit(tmp_path / "z")
    assert back.steps == 2 and back.claim_epsilon == pytest.approx(pld_laplace_epsilon(1.0, 2, DELTA))
    from dp_audit.manifest import load_manifest

    m = load_manifest(tmp_path / "z")
    assert m["claim"]["steps"] == 2 and m["claim"]["per_step"]["laplace_epsilon"] == 1.0
    assert m["config"]["steps"] == 2
    wrong = dataclasses.replace(res, claim_epsilon=1.0)  # the one-step claim
    with pytest.raises(IntegrityError, match="composition"):
        check_consistent(wrong, where="x")
    with pytest.raises(UsageError, match="advance"):
        step_audit(build("dpflat-distill-paper"), trials=10, progress=False, steps=2)
    with pytest.raises(UsageError, match="steps"):
        step_audit(build("dpsgd-dirac"), trials=10, progress=False, steps=0)


def _forge(d, edit_result=None, edit_manifest=None):
    """A consistent edit of a step-audit directory: the files edited, the artifact hash and the
    manifest's digest redone (what an unsigned directory cannot prevent; only the cross-checks
    of read_step_audit can catch it)."""
    import json

    from dp_audit.io import sha256_file
    from dp_audit.manifest import MANIFEST, manifest_digest

    r = json.loads((d / "step_audit.json").read_text())
    if edit_result is not None:
        edit_result(r)
    (d / "step_audit.json").write_text(json.dumps(r))
    m = json.loads((d / MANIFEST).read_text())
    m["artifacts"]["step_audit.json"] = sha256_file(d / "step_audit.json")
    if edit_manifest is not None:
        edit_manifest(m)
    m["digest"] = manifest_digest(m)
    (d / MANIFEST).write_text(json.dumps(m))


def _as_one_step(claim):
    for k in ("steps", "per_step", "composition", "pld_epsilon"):
        claim.pop(k, None)
    claim["per"] = "step"


_FORGERIES = {
    "one-step-result": dict(edit_result=lambda r: _as_one_step(r["claim"])),
    "one-step-both": dict(edit_result=lambda r: _as_one_step(r["claim"]),
                          edit_manifest=lambda m: _as_one_step(m["claim"])),
    "per-step-eps": dict(edit_result=lambda r: r["claim"]["per_step"].update(epsilon=100.0),
                         edit_manifest=lambda m: m["claim"]["per_step"].update(epsilon=100.0)),
}


@pytest.mark.parametrize("forgery", sorted(_FORGERIES))
def test_forged_k_or_per_step_claim_is_refused_on_read_and_by_the_gate(tmp_path, forgery):
    """Bugs caught (review of issue 17): (1) ``one-step-result``: a 2-step directory whose
    step_audit.json is rewritten as a *one-step* audit of the composed claim (√2·μ presented as
    the per-step claim, so the gate labels a 2-step bound a per-step one) was read back and gated
    without complaint: only the claim's ε/μ/δ were compared with the manifest's, not k nor the
    per-step record; (2) ``one-step-both``: the same rewrite in both files while the manifest's
    configuration still says steps = 2; (3) ``per-step-eps``: an edited per-step ε (the
    composition reads only μ, so per_step.epsilon = 100 next to μ = 1 passed). Each seen passing
    (no IntegrityError, gate exit 0) before the fix in dp_audit/stepaudit/output.py."""
    from dp_audit.cli import main

    d = tmp_path / "k2"
    step_audit(build("dpsgd-dirac", steps=2), trials=100, seed=0, progress=False, steps=2, out=d)
    read_step_audit(d)  # the honest directory reads back
    assert main(["gate", "--run", str(d)]) == 0
    _forge(d, **_FORGERIES[forgery])
    with pytest.raises(IntegrityError):
        read_step_audit(d)
    assert main(["gate", "--run", str(d)]) == 3
