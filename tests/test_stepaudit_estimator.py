"""Step-audit estimator: validity, threshold selection and α accounting on mechanisms with a
known answer (the Gaussian references of dp_audit.stepaudit.constructions, no trainer)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dp_audit.errors import UsageError
from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.stepaudit import Construction, gaussian_claim, step_audit
from dp_audit.stepaudit import bounds
from dp_audit.stepaudit.constructions import build

pytestmark = pytest.mark.statistical


def _pure_null() -> Construction:
    """The null with a pure-ε claim: Clopper-Pearson alone, at the full α."""
    g = build("gaussian-null")
    return Construction(name="null-pure", description="d0 = d1, pure-ε claim", step_fn=g.step_fn, state=None,
                        d0=g.d0, d1=g.d1, statistic=g.statistic, batched_step_fn=g.batched_step_fn,
                        claim_epsilon=1.0, delta=1e-5)


def test_null_construction_gives_zero_in_almost_all_seeds():
    """d0 and d1 identical: ε_LB > 0 must happen in at most α of the seeds (here 0 of 300).
    Catches a threshold chosen on the same trials it is evaluated on without splitting α
    (measured: 34 of these 300 seeds positive, 11% > α) and a point estimate reported as a bound."""
    cons = _pure_null()
    positives = sum(step_audit(cons, trials=400, alpha=0.05, seed=s, progress=False).eps_lb > 0 for s in range(300))
    assert positives <= 15, positives  # α·300


def test_null_with_both_estimators_gives_zero_in_almost_all_seeds():
    """The Gaussian null with a μ-GDP claim (CP and GDP, α/2 each). Catches a GDP bound that is
    positive without evidence (e.g. μ_LB not clamped at 0, or FNR/FPR lower instead of upper
    bounds)."""
    cons = build("gaussian-null")
    positives = sum(step_audit(cons, trials=400, alpha=0.05, seed=s, progress=False).eps_lb > 0 for s in range(100))
    assert positives <= 5, positives  # α·100


def test_null_with_bonferroni_strategy_gives_zero_in_almost_all_seeds():
    """The pure-ε null through the Bonferroni strategy (all trials, the order-statistic family at
    α/K, both orientations at α/2): ε_LB > 0 in at most α of 300 seeds. Catches a Bonferroni
    split that forgets K (the best threshold of the family reported at α)."""
    cons = _pure_null()
    positives = sum(step_audit(cons, trials=400, alpha=0.05, seed=s, progress=False, threshold="bonferroni").eps_lb > 0
                    for s in range(300))
    assert positives <= 15, positives  # α·300


@pytest.mark.parametrize("threshold", ["calibration", "bonferroni"])
def test_gaussian_reference_bound_is_valid_and_has_power(threshold):
    """N(0,1) vs N(μ,1) is exactly μ-GDP: ε_LB may exceed the true ε in at most ~α of the seeds,
    and must be well above 0. Catches a GDP→ε conversion that overshoots (e.g. μ_LB taken 30%
    too large) and an estimator with no power (always 0). It does not see small level errors (the
    bound's slack is larger); the level is pinned by test_rule_bound_matches_clopper_pearson_by_hand."""
    cons = build("gaussian", mu=1.0)
    res = [step_audit(cons, trials=3000, alpha=0.05, seed=s, progress=False, threshold=threshold) for s in range(25)]
    above = sum(r.eps_lb > cons.claim_epsilon for r in res)
    assert above <= 4, above  # P[Bin(25, 0.05) >= 5] ≈ 0.007
    assert min(r.eps_lb for r in res) > 0.5 * cons.claim_epsilon


def test_calibration_rule_does_not_depend_on_the_test_trials():
    """The threshold is a function of the calibration trials only. Catches a selection that
    looks at all trials (then editing a test trial can move the threshold)."""
    rng = np.random.default_rng(0)
    s0, s1 = rng.normal(0, 1, 1000), rng.normal(1, 1, 1000)
    a = bounds.bound(s0, s1, method="gdp", alpha=0.05, delta=1e-5, threshold="calibration", calibration=100)
    s0b, s1b = s0.copy(), s1.copy()
    s0b[100:] = rng.normal(3, 1, 900)  # change every test trial
    s1b[100:] = rng.normal(-3, 1, 900)
    b = bounds.bound(s0b, s1b, method="gdp", alpha=0.05, delta=1e-5, threshold="calibration", calibration=100)
    assert a.details["threshold_value"] == b.details["threshold_value"]
    assert a.details["orientation"] == b.details["orientation"]
    assert a.m == b.m == 1800
    assert b.epsilon_lb == 0.0  # the test trials now say the opposite of the calibration


def test_rule_bound_matches_clopper_pearson_by_hand():
    """One fixed rule's ε_LB equals ln((1 − δ − FNR_ub)/FPR_ub) with one-sided CP bounds at α/2,
    computed here with scipy directly. Catches a rule evaluated with > instead of >=, swapped
    FPR/FNR, or a CP bound at the wrong level."""
    s0 = np.array([0.0] * 90 + [1.0] * 10)
    s1 = np.array([0.0] * 20 + [1.0] * 80)
    eps, counts = bounds.rule_bound(s0, s1, bounds.Rule(1.0, 1), method="clopper-pearson", alpha=0.05, delta=1e-5)
    fpr_ub = stats.beta.ppf(1 - 0.025, 10 + 1, 100 - 10)
    fnr_ub = stats.beta.ppf(1 - 0.025, 20 + 1, 100 - 20)
    expected = max(np.log((1 - 1e-5 - fnr_ub) / fpr_ub), np.log((1 - 1e-5 - fpr_ub) / fnr_ub))
    assert counts["fp"] == 10 and counts["tp"] == 80
    assert eps == pytest.approx(expected, rel=1e-9)
    gdp_eps, c = bounds.rule_bound(s0, s1, bounds.Rule(1.0, 1), method="gdp", alpha=0.05, delta=1e-5)
    mu = stats.norm.ppf(1 - fpr_ub) - stats.norm.ppf(fnr_ub)
    assert c["mu_lb"] == pytest.approx(mu, rel=1e-9)
    assert gdp_eps == pytest.approx(gdp_epsilon(1e-5, mu), rel=1e-9)


def test_gdp_is_counted_only_under_a_mu_gdp_claim_and_alpha_is_split():
    """Laplace (pure ε) claim: only Clopper-Pearson, at the full α; a μ-GDP claim: both, at α/2
    each, and the verdict records K = 2. Catches GDP counted against a non-Gaussian claim (it can
    refute a correct pure-ε mechanism) and a maximum over two estimators without splitting α."""
    lap = step_audit(build("dpzo-laplace"), trials=500, alpha=0.05, seed=0, progress=False)
    assert [e.method for e in lap.estimates] == ["clopper-pearson"]
    assert lap.estimates[0].alpha == 0.05 and lap.verdict.n_tests == 1
    gau = step_audit(build("gaussian"), trials=500, alpha=0.05, seed=0, progress=False)
    assert [e.method for e in gau.estimates] == ["clopper-pearson", "gdp"]
    assert all(e.alpha == 0.025 for e in gau.estimates)
    assert gau.verdict.n_tests == 2 and gau.verdict.alpha_per_test == 0.025


def test_refutation_is_eps_lb_above_the_claim():
    """A mechanism with μ = 3 audited against a claim of μ = 1 is refuted; against μ = 3 it is
    not. Catches an inverted comparison or a verdict that ignores the GDP estimator."""
    strong = build("gaussian", mu=3.0)
    lying = Construction(name="liar", description="μ=3 mechanism claiming μ=1", step_fn=strong.step_fn,
                         state=None, d0=strong.d0, d1=strong.d1, statistic=strong.statistic,
                         batched_step_fn=strong.batched_step_fn, **gaussian_claim(1.0, 1e-5))
    r = step_audit(lying, trials=3000, seed=0, progress=False)
    assert r.refuted and r.verdict.status == "fail" and r.eps_lb > lying.claim_epsilon
    honest = step_audit(strong, trials=3000, seed=0, progress=False)
    assert not honest.refuted and honest.verdict.status == "pass"


def test_construction_rejects_inconsistent_claims_and_bad_inputs():
    """claim_epsilon must be the ε of claim_mu at δ; bad α/trials are usage errors. Catches a
    GDP refutation (μ_LB > μ) that would not imply ε_LB > claim_epsilon."""
    g = build("gaussian")
    with pytest.raises(UsageError, match="not the ε of"):
        Construction(name="x", description="", step_fn=g.step_fn, state=None, d0=g.d0, d1=g.d1,
                     statistic=g.statistic, claim_epsilon=1.0, delta=1e-5, claim_mu=1.0)
    with pytest.raises(UsageError, match="alpha"):
        step_audit(g, trials=100, alpha=0.7, progress=False)
    with pytest.raises(UsageError, match="trials"):
        step_audit(g, trials=1, progress=False)
    with pytest.raises(UsageError, match="threshold"):
        step_audit(g, trials=100, threshold="best-of-all", progress=False)


def test_trials_are_deterministic_in_the_seed_and_independent_across_sides():
    """Same seed → same scores; different seeds → different; d0 and d1 never share a stream.
    Catches one generator reused for both sides (then the null's d0 and d1 scores are equal)."""
    cons = build("gaussian-null")
    a = step_audit(cons, trials=300, seed=5, progress=False, chunk=64)
    b = step_audit(cons, trials=300, seed=5, progress=False, chunk=64)
    c = step_audit(cons, trials=300, seed=6, progress=False, chunk=64)
    assert np.array_equal(a.scores_d0, b.scores_d0) and np.array_equal(a.scores_d1, b.scores_d1)
    assert not np.array_equal(a.scores_d0, c.scores_d0)
    assert not np.allclose(a.scores_d0, a.scores_d1)
    assert len(set(np.round(a.scores_d0, 12))) == 300  # chunks do not repeat a stream


def test_unbatched_path_calls_step_fn_once_per_trial_in_order():
    """``batched=False`` runs every trial through ``step_fn`` (the batched path not at all), and
    the scores are the same as the batched path's (the Gaussian reference draws its generator
    identically in both). Catches step_audit ignoring ``batched=False`` or scoring rows in the
    wrong order."""
    ref = build("gaussian", mu=1.0)
    calls = {"step": 0, "batched": 0}

    def step(state, batch, generator):
        calls["step"] += 1
        return ref.step_fn(state, batch, generator)

    def batched(state, batch, generator, n):
        calls["batched"] += n
        return ref.batched_step_fn(state, batch, generator, n)

    cons = Construction(name="counted", description="", step_fn=step, state=None, d0=ref.d0, d1=ref.d1,
                        statistic=ref.statistic, batched_step_fn=batched, **gaussian_claim(1.0, 1e-5))
    a = step_audit(cons, trials=200, seed=1, progress=False, batched=True, chunk=1)
    assert calls == {"step": 0, "batched": 400}
    b = step_audit(cons, trials=200, seed=1, progress=False, batched=False, chunk=1)
    assert calls == {"step": 400, "batched": 400}
    assert np.allclose(a.scores_d0, b.scores_d0) and np.allclose(a.scores_d1, b.scores_d1)
    assert a.eps_lb == pytest.approx(b.eps_lb)
