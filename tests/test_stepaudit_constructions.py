"""Built-in step-audit constructions on the real trainer code paths: DP-SGD (Opacus), DP-Flat
AWP (trainers/dpflat_awp.py, three modes) and DP-ZO (trainers/zo.py), on the synthetic model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build

SEEDS = range(20)


@pytest.fixture(scope="module")
def dpsgd():
    return build("dpsgd-dirac", sigma=1.0)


def _releases(cons, batch, *, n, seed, batched):
    g = torch.Generator().manual_seed(seed)
    if batched:
        return cons.batched_step_fn(cons.state, batch, g, n)
    return torch.stack([cons.step_fn(cons.state, batch, g) for _ in range(n)])


# ------------------------------------------------------------------ controls


@pytest.mark.statistical
def test_dpsgd_control_is_valid_and_has_power_in_20_seeds(dpsgd):
    """One Opacus DP-SGD step (q=1, σ=1) is exactly 1-GDP: ε_LB must never exceed the claim in
    20 seeds and must be > 0 in each. Catches an estimator that overshoots (invalid), a DP-SGD
    path whose noise or clipping is wrong (e.g. noise std σC/B² or no clipping), and a
    construction that does not see the canary (ε_LB = 0)."""
    res = [step_audit(dpsgd, trials=2000, alpha=0.05, seed=s, progress=False) for s in SEEDS]
    eps = np.array([r.eps_lb for r in res])
    assert not any(r.refuted for r in res)
    assert np.all(eps <= dpsgd.claim_epsilon), eps
    assert np.all(eps > 0), eps


@pytest.mark.statistical
def test_dpsgd_dirac_audit_is_tight_at_1e5_trials(dpsgd):
    """Tightness: at N = 10^5 the GDP bound reaches >= 0.9 of the true ε of μ = 1/σ (the
    Dirac canary makes the step's two output distributions exactly N(0, s²) and N(C/B, s²)).
    Catches a statistic that is not the canary's direction (power lost) and a construction whose
    clipped sums differ by less than C."""
    r = step_audit(dpsgd, trials=100_000, alpha=0.05, seed=0, progress=False)
    true_eps = gdp_epsilon(1e-5, 1.0)
    assert r.claim_epsilon == pytest.approx(true_eps)
    assert 0.9 * true_eps <= r.eps_lb <= true_eps


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["dpzo-gaussian", "dpzo-laplace"])
def test_dpzo_controls_never_exceed_their_claim_in_20_seeds(name):
    """DP-ZO (zo_step) with Gaussian (1-GDP) or Laplace (pure ε0 = 1) noise and a canary whose
    SPSA scalar is clipped: ε_LB <= claim in 20 seeds, and > 0. Catches a Laplace scale of
    C/(2ε0) or a Gaussian std below σC in the DP-ZO code, and GDP counted for a Laplace claim."""
    cons = build(name)
    eps = np.array([step_audit(cons, trials=2000, alpha=0.05, seed=s, progress=False).eps_lb for s in SEEDS])
    assert np.all(eps <= cons.claim_epsilon), eps
    assert np.all(eps > 0), eps


# ------------------------------------------------------------------ DP-Flat AWP


def test_awp_paper_mode_moves_the_clipped_sum_by_2k_plus_1_times_c():
    """Noise off: the released updates of d0 and d1 differ by (2k+1)·C/B along e0 in paper mode
    (k = 6 examples flip with v, plus the canary), and by C/B with DP-SAT and per-example AWP.
    Catches a construction in which the canary does not set v (e.g. not in the first
    micro-batch), and an AWP whose v is not removed after the step."""
    for mode, factor in (("paper", 13), ("dpsat", 1), ("per-example", 1)):
        cons = build(f"dpflat-awp-{mode}", sigma=1e-12)
        s0 = float(cons.statistic(cons.step_fn(cons.state, cons.d0, torch.Generator()).unsqueeze(0))[0])
        s1 = float(cons.statistic(cons.step_fn(cons.state, cons.d1, torch.Generator()).unsqueeze(0))[0])
        assert abs(s1 - s0) == pytest.approx(factor * 1.0 / 8, rel=1e-3), (mode, s0, s1)
        assert cons.info["expected_sensitivity"] == pytest.approx(factor * 1.0)


@pytest.mark.statistical
def test_awp_paper_mode_refutes_the_per_step_claim():
    """DP-Flat paper mode (AWP from the raw micro-batch gradient) refutes its per-step 1-GDP claim
    at 95% in every seed tried. Catches an AWP that stopped using the raw gradient (then the
    construction's sensitivity is C and nothing is refuted) and a broken refutation rule."""
    cons = build("dpflat-awp-paper", sigma=1.0)
    for seed in range(3):
        r = step_audit(cons, trials=2000, alpha=0.05, seed=seed, progress=False)
        assert r.refuted and r.eps_lb > 2 * cons.claim_epsilon, r.eps_lb


@pytest.mark.statistical
@pytest.mark.parametrize("mode", ["dpsat", "per-example"])
def test_awp_private_variants_are_not_refuted(mode):
    """DP-SAT and per-example AWP keep the sensitivity at C: ε_LB <= claim over 10 seeds, with the
    same construction that refutes paper mode; and the audit still has power (ε_LB > 0).
    Catches a private variant that leaks the current batch into v (e.g. DP-SAT reading the
    current raw gradient)."""
    cons = build(f"dpflat-awp-{mode}", sigma=1.0)
    eps = np.array([step_audit(cons, trials=2000, alpha=0.05, seed=s, progress=False).eps_lb for s in range(10)])
    assert np.all(eps <= cons.claim_epsilon), eps
    assert np.all(eps > 0), eps


# ------------------------------------------------------------------ batched = real step


@pytest.mark.parametrize("name", ["dpsgd-dirac", "dpflat-awp-paper", "dpflat-awp-dpsat", "dpflat-awp-per-example"])
def test_batched_trials_match_the_real_opacus_step(name):
    """The batched path (deterministic part once + Opacus' noise for n trials) must have the
    distribution of n real steps: equal mean per coordinate, equal std (σC/B), and a KS test on
    the statistic. Catches a batched shortcut that forgets the 1/B scaling, uses the wrong std,
    or drops an AWP residual."""
    cons = build(name, sigma=1.0)
    for batch in (cons.d0, cons.d1):
        loop = _releases(cons, batch, n=600, seed=1, batched=False).double()
        fast = _releases(cons, batch, n=4000, seed=2, batched=True).double()
        assert loop.shape[1] == fast.shape[1] == 8
        assert torch.allclose(loop.mean(0), fast.mean(0), atol=5 * 0.125 / np.sqrt(600))
        assert torch.allclose(loop.std(0), torch.full((8,), 0.125, dtype=torch.float64), rtol=0.15)
        assert torch.allclose(fast.std(0), torch.full((8,), 0.125, dtype=torch.float64), rtol=0.05)
        p = stats.ks_2samp(cons.statistic(loop).numpy(), cons.statistic(fast).numpy()).pvalue
        assert p > 1e-3, p


@pytest.mark.parametrize("name", ["dpsgd-dirac", "dpflat-awp-paper", "dpflat-awp-per-example"])
def test_batched_deterministic_part_equals_the_real_step_without_noise(name):
    """With σ = 0 the batched releases equal the real step's release exactly (up to float32
    rounding). Catches a batched path that computes the clipped sum differently from Opacus."""
    cons = build(name, sigma=1e-30)
    for batch in (cons.d0, cons.d1):
        real = cons.step_fn(cons.state, batch, torch.Generator().manual_seed(0))
        fast = cons.batched_step_fn(cons.state, batch, torch.Generator().manual_seed(0), 5)
        assert torch.allclose(fast, real.expand(5, -1), atol=1e-6)


@pytest.mark.parametrize("name", ["dpzo-gaussian", "dpzo-laplace"])
def test_dpzo_batched_equals_looped_zo_steps(name):
    """The batched DP-ZO path draws the same noise (trainers.zo.sample_noise, same generator) as
    n real zo_step calls: releases equal. Catches a batched path that diverges from zo_step."""
    cons = build(name)
    for batch in (cons.d0, cons.d1):
        loop = _releases(cons, batch, n=50, seed=3, batched=False)
        fast = _releases(cons, batch, n=50, seed=3, batched=True)
        assert torch.allclose(loop, fast, rtol=1e-10, atol=1e-12)


def test_step_fn_leaves_the_state_untouched():
    """Every trial starts from the construction's state: the step must not move it. Catches a
    state that aliases the live parameters (the step moves it, later trials start elsewhere and
    the release P_after − P_before collapses to 0)."""
    for name in ("dpsgd-dirac", "dpflat-awp-paper", "dpzo-gaussian"):
        cons = build(name)
        before = {k: v.clone() if torch.is_tensor(v) else v for k, v in cons.state.items()}
        for _ in range(3):
            cons.step_fn(cons.state, cons.d1, torch.Generator().manual_seed(0))
        cons.batched_step_fn(cons.state, cons.d1, torch.Generator().manual_seed(0), 4)
        for k, v in before.items():
            assert (torch.equal(v, cons.state[k]) if torch.is_tensor(v) else v == cons.state[k]), (name, k)


@pytest.mark.slow
def test_dpsgd_tightness_through_the_real_step_loop_at_1e5_trials(dpsgd):
    """The same tightness (>= 0.9 of the true ε at N = 10^5), every trial through the real
    Opacus step (no batched shortcut): ~12 min on one CPU. Catches a batched path that is tighter
    than the real step."""
    r = step_audit(dpsgd, trials=100_000, alpha=0.05, seed=0, progress=False, batched=False)
    true_eps = gdp_epsilon(1e-5, 1.0)
    assert 0.9 * true_eps <= r.eps_lb <= true_eps
