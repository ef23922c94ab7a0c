"""Issue 17, second milestone: step-audit constructions for DP-Flat's distillation (c), the
regulariser escaping clipping (e), sparse layer selection (d), and (a)/(b) on the real prefix-tuned
transformer. Each test names the bug it catches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build


def _noise_free_shift(cons) -> float:
    """(statistic on d1) − (statistic on d0) of the real step, noise off (σ tiny)."""
    s = [float(cons.statistic(cons.step_fn(cons.state, b, torch.Generator()).unsqueeze(0))[0])
         for b in (cons.d0, cons.d1)]
    return s[1] - s[0]


# ------------------------------------------------------------------ (c) distillation


def test_distill_paper_moves_the_clipped_sum_by_c_plus_2_b_minus_1_lambda():
    """Noise off, B = 8: paper mode moves the release by (C + 14λ + c*λ)/B along −e0 (the canary's
    clipped term, 7 zero-gradient examples whose λ∇R flips, the canary's own coefficient c* ≈ 1/38),
    public mode by C/B. Catches a paper-mode teacher that is not retrained on the side's data (then
    paper = public: 1/8), a Distill that drops the clipping-coefficient weighting in paper mode, and
    a public mode that leaks the teacher."""
    lam = 0.1
    paper = build("dpflat-distill-paper", sigma=1e-12, lam=lam)
    public = build("dpflat-distill-public", sigma=1e-12, lam=lam)
    assert 8 * _noise_free_shift(paper) == pytest.approx(1.0 + 14 * lam + lam / 38.3, rel=2e-3)
    assert 8 * _noise_free_shift(public) == pytest.approx(1.0, rel=1e-4)
    assert paper.info["teacher_shift"] > 0


@pytest.mark.statistical
def test_distill_paper_refutes_its_claim_and_public_does_not():
    """σ = 1, λ = 0.1 (true μ ≈ 2.4): paper mode is refuted at 95% in each of 3 seeds; public mode,
    with the same data, state and statistic, never exceeds the claim in 10 seeds and has power
    (ε_LB > 0). Catches a teacher trained on public data in paper mode (no refutation) and a
    public mode that adds the regulariser before the noise with the coefficients (refuted)."""
    paper = build("dpflat-distill-paper", sigma=1.0, lam=0.1)
    for seed in range(3):
        assert step_audit(paper, trials=4000, seed=seed, progress=False).refuted
    public = build("dpflat-distill-public", sigma=1.0, lam=0.1)
    eps = np.array([step_audit(public, trials=2000, seed=s, progress=False).eps_lb for s in range(10)])
    assert np.all(eps <= public.claim_epsilon) and np.all(eps > 0), eps


# ------------------------------------------------------------------ (e) the regulariser escaping clipping


@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0])
def test_escape_shift_is_c_plus_lambda(lam):
    """Noise off: the canary's term with paper-mode weighting has norm C(1 − 1e-5) + λ, not C.
    Catches clipping applied after the regulariser is added (then the shift is C) and a
    coefficient computed from the regularised gradient."""
    cons = build("dpflat-distill-escape", sigma=1e-12, lam=lam)
    assert 8 * _noise_free_shift(cons) == pytest.approx(1.0 - 1e-5 + lam, rel=1e-5)
    assert cons.info["expected_sensitivity"] == pytest.approx(1.0 - 1e-5 + lam, rel=1e-9)


@pytest.mark.statistical
def test_escape_is_refuted_at_lambda_1_and_audit_stays_valid_at_lambda_001():
    """λ = 1 (μ = 2): refuted at N = 4000 in 3 seeds. λ = 0.01 (μ = 1.01): at N = 2000 the bound
    must not exceed μ = 1.01's ε in 10 seeds (validity of the estimator at a true μ just above the
    claim). Catches a construction whose canary is clipped (coefficient < 1: shift C, no refutation
    at λ = 1) and an estimator that overshoots."""
    from dp_audit.estimate.gdp_math import gdp_epsilon

    big = build("dpflat-distill-escape", sigma=1.0, lam=1.0)
    assert all(step_audit(big, trials=4000, seed=s, progress=False).refuted for s in range(3))
    small = build("dpflat-distill-escape", sigma=1.0, lam=0.01)
    eps = np.array([step_audit(small, trials=2000, seed=s, progress=False).eps_lb for s in range(10)])
    assert np.all(eps <= gdp_epsilon(1e-5, 1.01 - 1e-5)), eps


# ------------------------------------------------------------------ (d) sparse selection


def test_sparse_paper_canary_flips_the_removed_layer_and_zeroes_its_columns():
    """The real greedy selection removes layer 0 on d0 and layer 1 on d1 (the dev-split canary);
    the release is exactly 0 on the removed layer's columns (no data, no noise: the trainer's step
    hook masks the noised gradient) in the real step and in the batched path. Catches a mask that
    is not applied to the noise (released noise on a removed layer) and a canary that does not flip
    the selection."""
    cons = build("dpflat-sparse-paper", sigma=1.0)
    assert (cons.info["removed_layer_d0"], cons.info["removed_layer_d1"]) == (0, 1)
    g = torch.Generator().manual_seed(0)
    for side, cols in ((cons.d0, slice(0, 4)), (cons.d1, slice(4, 8))):
        real = cons.step_fn(cons.state, side, g)
        fast = cons.batched_step_fn(cons.state, side, g, 50)
        assert torch.all(real[cols] == 0) and torch.all(fast[:, cols] == 0)
        other = slice(4, 8) if cols.start == 0 else slice(0, 4)
        assert float(fast[:, other].abs().min()) > 0


@pytest.mark.statistical
def test_sparse_paper_is_refuted_and_public_is_not():
    """Paper mode: the worlds' releases have different supports; refuted at 95% in 3 seeds (CP
    alone too). Public mode (public probe, gradient canary in the batch): ≤ claim in 10 seeds and
    > 0. Catches a selection run on public data in paper mode and a public mode whose mask depends
    on the canary."""
    paper = build("dpflat-sparse-paper", sigma=1.0)
    for seed in range(3):
        r = step_audit(paper, trials=2000, seed=seed, progress=False)
        assert r.refuted and r.eps_lb_by_method["clopper-pearson"] > paper.claim_epsilon
    public = build("dpflat-sparse-public", sigma=1.0)
    eps = np.array([step_audit(public, trials=2000, seed=s, progress=False).eps_lb for s in range(10)])
    assert np.all(eps <= public.claim_epsilon) and np.all(eps > 0), eps


# ------------------------------------------------------------------ batched = real step


@pytest.mark.parametrize("name", ["dpflat-distill-paper", "dpflat-distill-escape", "dpflat-sparse-paper",
                                  "dpflat-sparse-public"])
def test_batched_trials_match_the_real_step(name):
    """The batched path (noise-free step once + Opacus noise, masked like the step hook masks it)
    has the distribution of real steps: equal means, std σC/B on live coordinates, KS test on the
    statistic. Catches a batched path that forgets the distillation term, the mask on the noise or
    the 1/B scaling."""
    cons = build(name, sigma=1.0)
    b = 8 if name != "dpflat-sparse-paper" else 7
    for side in (cons.d0, cons.d1):
        g = torch.Generator().manual_seed(1)
        loop = torch.stack([cons.step_fn(cons.state, side, g) for _ in range(200)]).double()
        fast = cons.batched_step_fn(cons.state, side, torch.Generator().manual_seed(2), 4000).double()
        live = fast.std(0) > 0
        assert torch.equal(live, loop.std(0) > 0)
        assert torch.allclose(loop.mean(0), fast.mean(0), atol=5 / b / np.sqrt(200))
        assert torch.allclose(fast.std(0)[live], torch.full((int(live.sum()),), 1 / b, dtype=torch.float64),
                              rtol=0.05)
        p = stats.ks_2samp(cons.statistic(loop).numpy(), cons.statistic(fast).numpy()).pvalue
        assert p > 1e-3, p


# ------------------------------------------------------------------ (a), (b) on the real transformer


@pytest.fixture(scope="module")
def tf_dpsgd():
    return build("transformer-dpsgd", sigma=1.0)


def test_transformer_dpsgd_shift_is_c_and_batched_equals_real_step(tf_dpsgd):
    """On the tiny prefix-tuned BERT (float64, every example clipped at C = 1e-3) the noise-free
    DP-SGD releases differ by exactly C/B (μ = 1/σ), and the batched path equals the real step
    with the noise off. Catches float32 rounding of the release (μ off by up to 2x at small C, seen
    before the model was made float64) and a batched path that differs from Opacus' step."""
    cons = tf_dpsgd
    assert cons.info["expected_mu"] == pytest.approx(1.0, rel=1e-4)
    quiet = build("transformer-awp-paper", sigma=1e-30, gamma=0.1)
    for side in (quiet.d0, quiet.d1):
        real = quiet.step_fn(quiet.state, side, torch.Generator().manual_seed(0))
        fast = quiet.batched_step_fn(quiet.state, side, torch.Generator().manual_seed(0), 3)
        assert torch.allclose(fast, real.expand(3, -1), atol=1e-15)


@pytest.mark.statistical
def test_transformer_dpsgd_audit_is_valid_and_tight(tf_dpsgd):
    """N = 20 000 per side on the transformer: ε_LB ≤ the 1-GDP claim and ≥ 0.85 of it. Catches a
    statistic that is not the canary's clipped direction (power lost) and a step whose noise is
    smaller than σC (refuted)."""
    r = step_audit(tf_dpsgd, trials=20_000, seed=0, progress=False)
    assert not r.refuted
    assert 0.85 * tf_dpsgd.claim_epsilon <= r.eps_lb <= tf_dpsgd.claim_epsilon
