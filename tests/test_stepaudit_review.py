"""Review of the step-level audit core (issue 17): defects found by an adversarial read, each
with the test that shows it, and null simulations of the estimator on mechanisms with a known ε
other than the Gaussian (Laplace, randomized response: heavy tails and tied scores)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dp_audit.errors import IntegrityError
from dp_audit.estimate import MU_GDP_ONLY
from dp_audit.io import atomic_write_json, sha256_file
from dp_audit.manifest import MANIFEST
from dp_audit.stepaudit import Construction, bounds, gaussian_claim, read_step_audit, step_audit, summary_line
from dp_audit.stepaudit.constructions import build

DELTA = 1e-5


def _randomized_response(eps: float, claim: dict) -> Construction:
    """Randomized response with ε (pure ε-DP): the release is the bit, flipped w.p. 1/(1+e^ε)."""
    p = math.exp(eps) / (1 + math.exp(eps))

    def step(state, bit, g):
        return (bit + (torch.rand(1, generator=g, dtype=torch.float64) > p).double()) % 2

    def batched(state, bit, g, n):
        return (bit + (torch.rand(n, 1, generator=g, dtype=torch.float64) > p).double()) % 2

    return Construction(name=f"rr{eps:g}", description=f"randomized response, ε = {eps:g}", step_fn=step, state=None,
                        d0=torch.zeros(1, dtype=torch.float64), d1=torch.ones(1, dtype=torch.float64),
                        statistic=lambda r: r[:, 0], batched_step_fn=batched, **claim)


@pytest.mark.parametrize("threshold", ["calibration", "bonferroni"])
def test_gdp_bound_is_labelled_valid_only_under_a_mu_gdp_claim(threshold):
    """Randomized response at ε = 4 is pure 4-DP (and 4.19-GDP), so a 5-GDP claim is true; the
    audit's headline ε_LB (the ε of μ_LB-GDP) is ≈ 25, far above the step's real ε. The number
    refutes only μ-GDP claims, so, as everywhere else in dp-audit (estimate_epsilon), it must carry
    the label MU_GDP_ONLY, and the summary must give the bound valid for any mechanism.
    Bug caught: the calibration path (the default) reported the GDP bound as a plain ε lower bound
    (no validity label; the bonferroni path had one), and the summary printed "ε_LB = 25.4 at 95%"
    for a 4-DP step with no caveat (both strategies). Seen failing before the fix."""
    res = step_audit(_randomized_response(4.0, gaussian_claim(5.0, DELTA)), trials=20_000, seed=0, progress=False,
                     threshold=threshold)
    cp, gdp = res.estimates
    assert not res.refuted
    assert gdp.epsilon_lb > 3 * 4.0  # the GDP number is not an ε lower bound of this step...
    assert gdp.details.get("validity") == MU_GDP_ONLY  # ...and says so
    assert "validity" not in cp.details and cp.epsilon_lb <= 4.0
    line = summary_line(res)
    assert MU_GDP_ONLY in line and f"for any mechanism: ε_LB = {cp.epsilon_lb:.3f}" in line


def _null(sampler, true_eps: float, methods, *, n: int, seeds: int, threshold: str) -> int:
    over = 0
    for s in range(seeds):
        s0, s1 = sampler(np.random.default_rng(10_000 + s), n)
        eps = max(bounds.bound(s0, s1, method=m, alpha=0.05 / len(methods), delta=DELTA, threshold=threshold,
                               calibration=n // 10 if threshold == "calibration" else 0).epsilon_lb for m in methods)
        over += eps > true_eps
    return over


@pytest.mark.statistical
@pytest.mark.parametrize("threshold", ["calibration", "bonferroni"])
def test_null_simulation_laplace_and_randomized_response_200_seeds(threshold):
    """ε_LB > true ε in at most ~α of 200 seeds, on Laplace (ε = 2, shift 1, scale 1/2: pure 2-DP)
    and randomized response (ε = 2; scores are 0/1, every threshold is a tie), N = 2000 per side,
    Clopper-Pearson at the full α (a pure-ε claim: GDP not counted). True ε at δ: Laplace
    ε + 2 ln(1 − δ), RR ln((p − δ)/(1 − p)). Measured (300 seeds, review): calibration 1/300
    (Laplace), 8/300 (RR); bonferroni 0/300, 0/300. The bound 20 of 200 is α·200 + 2.3 sd.
    Bugs caught (each put in and seen failing): point rates instead of Clopper-Pearson upper
    bounds (calibration 45 Laplace / 141 RR of 200; bonferroni 200 / 122); the calibration rule
    chosen and tested on all trials (Laplace 26 of 200). Not caught (the bound's slack hides it:
    RR 15 of 200): FPR and FNR each bounded at α instead of α/2."""
    lap = _null(lambda r, n: (r.laplace(0, 0.5, n), r.laplace(1, 0.5, n)), 2 + 2 * math.log1p(-DELTA),
                ("clopper-pearson",), n=2000, seeds=200, threshold=threshold)
    p = math.exp(2) / (1 + math.exp(2))
    rr = _null(lambda r, n: ((r.random(n) > p).astype(float), (r.random(n) < p).astype(float)),
               math.log((p - DELTA) / (1 - p)), ("clopper-pearson",), n=2000, seeds=200, threshold=threshold)
    assert lap <= 20 and rr <= 20, (lap, rr)


@pytest.mark.statistical
def test_null_simulation_gaussian_several_mu_both_estimators():
    """N(0,1) vs N(μ,1) at μ = 0.5, 2, 4 (exactly μ-GDP), CP and GDP at α/2 each under the true
    μ-GDP claim, calibration strategy, 200 seeds, N = 2000: ε_LB > ε(μ) in at most 20 (measured 0
    of 300 at each μ). Bug caught: the bounds computed from point rates (μ̂ instead of μ_LB; seen
    98-104 of 200 at each μ)."""
    from dp_audit.estimate.gdp_math import gdp_epsilon

    for mu in (0.5, 2.0, 4.0):
        over = _null(lambda r, n, mu=mu: (r.normal(0, 1, n), r.normal(mu, 1, n)), gdp_epsilon(DELTA, mu),
                     ("clopper-pearson", "gdp"), n=2000, seeds=200, threshold="calibration")
        assert over <= 20, (mu, over)


def _edit(out, change) -> None:
    """Edit step_audit.json consistently: the manifest's hash is updated too (what a tamperer or a
    buggy tool would do); only the content check can then notice."""
    data = json.loads((out / "step_audit.json").read_text())
    change(data)
    atomic_write_json(out / "step_audit.json", data)
    man = json.loads((out / MANIFEST).read_text())
    man["artifacts"]["step_audit.json"] = sha256_file(out / "step_audit.json")
    man.pop("digest", None)
    from dp_audit.manifest import _save  # recomputes the digest

    _save(out, man)


@pytest.mark.parametrize("edit", ["verdict-pass", "lower-bounds", "claim-raised"])
def test_reader_refuses_a_verdict_the_trials_do_not_give(tmp_path, edit):
    """A refuting step audit (DP-Flat paper mode) whose step_audit.json is edited with the hashes
    kept consistent: verdict flipped to pass; bounds lowered under the claim; the claim raised
    above the bounds. read_step_audit (what the gate will read) must refuse all three: the
    verdict is recomputed from trials.npz and the claim compared with the manifest's (an edit of
    the manifest's claim as well is only caught by a signature, DP_AUDIT_SIGNING_KEY).
    Bug caught: read_step_audit checked the hashes only and returned the edited verdict (seen:
    all three accepted before the fix)."""
    out = tmp_path / "sa"
    res = step_audit(build("dpflat-awp-paper"), trials=1000, seed=0, progress=False, out=out)
    assert res.refuted
    assert read_step_audit(out).refuted  # the untouched directory reads back

    def change(d):
        if edit == "verdict-pass":
            d["refuted"] = False
            d["verdict"]["status"] = "pass"
        elif edit == "lower-bounds":
            for e in d["estimates"]:
                e["epsilon_lb"] = 1.0
                e["details"]["refutes"] = False
            d["eps_lb"] = d["verdict"]["epsilon_lb_max"] = 1.0
            d["refuted"], d["verdict"]["status"] = False, "pass"
        else:
            d["claim"]["epsilon"] = d["verdict"]["claimed_epsilon"] = 1e3
            d["claim"]["mu"] = None
            d["refuted"], d["verdict"]["status"] = False, "pass"
            d["estimates"] = d["estimates"][:1]
            d["estimates"][0]["details"]["refutes"] = False
            d["eps_lb"] = d["verdict"]["epsilon_lb_max"] = d["estimates"][0]["epsilon_lb"]
            d["verdict"]["n_tests"] = 1

    _edit(out, change)
    with pytest.raises(IntegrityError):
        read_step_audit(out)


def test_cli_bad_delta_and_seed_are_usage_errors(tmp_path, capsys):
    """--delta 0, --delta 1 and --seed -1 are usage errors (exit 2, one line), not internal errors.
    Bug caught: gaussian_claim called gdp_epsilon (ValueError) before the Construction checked δ,
    and a negative seed reached SeedSequence (ValueError): the CLI exited 4 with a traceback log
    (seen before the fix)."""
    from dp_audit.cli import main

    for extra in (["--delta", "0"], ["--delta", "1"], ["--seed", "-1"]):
        code = main(["step-audit", "--construction", "dpsgd-dirac", "--trials", "100", "--no-progress",
                     "--out", str(tmp_path / "x"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, (extra, code, err)
        assert len(err.splitlines()) == 1 and "internal error" not in err
    assert not (tmp_path / "x").exists()


def test_paper_awp_with_a_random_micro_batch_refuses_batched_trials_and_varies_per_trial():
    """Paper-mode AWP whose micro-batch (2 of 8) is drawn per step: the step is random beyond its
    noise (v depends on whether the canary was drawn), so one noise-free step cannot stand for n
    trials. The batched path must refuse (a usage error, exit 2 through the API/CLI, not an
    internal error), and the real step, noise off, must give different releases across trials
    (the canary in v or not) with the draw taken from the step's generator (same seed, same
    releases). Bugs caught: a batched shortcut used on such a step (every trial of a chunk would
    share one micro-batch: dependent trials); the refusal raised as ValueError (seen: exit 4 path);
    a micro-batch drawn from the global RNG (the same seed gives different releases)."""
    from dp_audit.errors import UsageError
    from dp_audit.stepaudit.opacus_step import OpacusStep

    from dp_audit.stepaudit.constructions import _awp_examples
    from dp_audit.stepaudit.toy import ToyPrefixModel

    cons = build("dpflat-awp-paper", sigma=1e-12)
    model = ToyPrefixModel(_awp_examples(8, 8), tokens=1, width=8)  # the same data, a fresh model
    runner = OpacusStep(model, noise_multiplier=1e-12, max_grad_norm=1.0, expected_batch_size=8,
                        awp_mode="paper", gamma=1e-4, micro_batch=2)
    with pytest.raises(UsageError, match="unbatched"):
        runner.batched(cons.state, cons.d1, torch.Generator().manual_seed(0), 4)
    g = torch.Generator().manual_seed(1)
    s = [float(cons.statistic(runner.step(cons.state, cons.d1, g).unsqueeze(0))[0]) for _ in range(40)]
    assert len({round(x, 6) for x in s}) >= 2, s  # canary in v in some trials, not in others
    g2 = torch.Generator().manual_seed(1)
    s2 = [float(cons.statistic(runner.step(cons.state, cons.d1, g2).unsqueeze(0))[0]) for _ in range(40)]
    assert s == s2
