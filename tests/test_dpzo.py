"""DP-ZO (arXiv 2401.04343) mechanisms: the MeZO seed trick, restoration of θ, clipping, noise
and accounting.

References: SPSA two-point estimate and in-place +λz/−2λz/+λz (Malladi et al. 2023, MeZO);
pure-ε amplification by Poisson subsampling ln(1 + q(e^ε₀ − 1)) (Balle, Barthe & Gaboardi 2018,
Thm. 8 / Li, Qardaji & Su 2012) composed over T steps; Gaussian ε from Opacus' RDP accountant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dp_audit.accounting import cross_check, laplace_pure_epsilon
from dp_audit.config import run_config_from_dict
from dp_audit.trainers.dpzo import claim_zo, laplace_epsilon_step, ledger_zo, plan_zo
from dp_audit.trainers.modeling import trainable_parameters
from dp_audit.trainers.zo import direction, perturb_, sample_noise, spsa, zo_step
from tests.test_dpflat_mechanisms import tiny_batch, tiny_prefix_model

EPS32 = float(torch.finfo(torch.float32).eps)


def tiny_full_model():
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.backbone import init_weights_

    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    init_weights_(model, generator=torch.Generator().manual_seed(0), std=0.2)
    return model


def test_fixed_seed_regenerates_the_same_z_and_perturb_adds_exactly_scale_z():
    params = trainable_parameters(tiny_full_model())
    z1, z2, z3 = direction(params, seed=7), direction(params, seed=7), direction(params, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(z1, z2))
    assert not torch.equal(z1[0], z3[0])
    before = [p.detach().clone() for p in params]
    perturb_(params, seed=7, scale=1e-3)
    for p, b, z in zip(params, before, z1):  # equal up to rounding (add_ with alpha may fuse)
        assert bool(((p.detach() - (b + 1e-3 * z)).abs() <= EPS32 * (b.abs() + 1e-3 * z.abs())).all())


@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_inplace_restore_is_exact_up_to_a_few_ulps_and_snapshot_is_bit_exact(lam):
    model = tiny_full_model()
    params = trainable_parameters(model)
    batch = tiny_batch(n=5)
    theta = [p.detach().clone() for p in params]
    z = direction(params, seed=11)
    spsa(model, params, batch, seed=11, scale=lam, restore="inplace")
    worst = 0.0
    for p, t, zz in zip(params, theta, z):
        bound = 2 * EPS32 * (t.abs() + 2 * lam * zz.abs())  # three roundings, each <= ulp/2 of its result
        err = (p.detach() - t).abs()
        assert bool((err <= bound).all())
        worst = max(worst, float(err.max()))
    # as documented: not bit-exact in general (so the bound above is what is claimed)
    if lam == 0.5:
        assert worst > 0
    spsa(model, params, batch, seed=11, scale=lam, restore="snapshot")
    # snapshot restores exactly what it found (the slightly moved θ from the in-place call)
    moved = [p.detach().clone() for p in params]
    spsa(model, params, batch, seed=12, scale=lam, restore="snapshot")
    assert all(torch.equal(p.detach(), m) for p, m in zip(params, moved))


def test_spsa_scalars_are_the_two_point_differences_along_z():
    model = tiny_prefix_model()
    params = trainable_parameters(model)
    batch = tiny_batch(n=4)
    lam = 1e-2
    est = spsa(model, params, batch, seed=3, scale=lam, restore="snapshot")
    z = direction(params, seed=3)
    theta = [p.detach().clone() for p in params]

    def losses_at(sign):
        with torch.no_grad():
            for p, t, zz in zip(params, theta, z):
                p.copy_(t + sign * lam * zz)
        model.eval()
        with torch.no_grad():
            from tests.test_dpflat_mechanisms import ce_each
            return ce_each(model, batch)

    expect = (losses_at(+1) - losses_at(-1)) / (2 * lam)
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
    assert torch.allclose(est.scalars, expect, rtol=1e-4, atol=1e-4)
    assert est.scalars.shape == (4,)


def test_zo_step_clips_every_scalar_and_updates_along_the_same_z():
    model = tiny_prefix_model()
    params = trainable_parameters(model)
    batch = tiny_batch(n=6)
    lam, clip, lr = 1e-2, 1e-3, 0.1
    rho = spsa(model, params, batch, seed=5, scale=lam, restore="snapshot").scalars.double()
    assert bool((rho.abs() > clip).any())  # clipping has work to do
    theta = [p.detach().clone() for p in params]
    step = zo_step(model, params, batch, seed=5, scale=lam, lr=lr, clip=clip, noise="none", noise_scale=0.0,
                   normaliser=10.0, generator=torch.Generator().manual_seed(0), restore="snapshot")
    clipped = rho.clamp(-clip, clip)
    assert bool((clipped.abs() <= clip).all())
    assert step.gradient == pytest.approx(float(clipped.sum()) / 10.0, rel=1e-6)
    assert step.clipped_fraction == pytest.approx(float((rho.abs() > clip).double().mean()))
    z = direction(params, seed=5)
    for p, t, zz in zip(params, theta, z):
        assert torch.allclose(p.detach(), t - lr * step.gradient * zz, atol=1e-7)
    # an empty batch is a noise-only step
    empty = {k: v[:0] for k, v in batch.items()}
    s0 = zo_step(model, params, empty, seed=6, scale=lam, lr=lr, clip=clip, noise="gaussian", noise_scale=2.0,
                 normaliser=10.0, generator=torch.Generator().manual_seed(1))
    assert s0.batch_size == 0 and s0.gradient != 0.0


def test_noise_samplers_have_the_stated_distributions():
    g = torch.Generator().manual_seed(0)
    lap = np.array([sample_noise("laplace", scale=0.7, generator=g) for _ in range(4000)])
    gau = np.array([sample_noise("gaussian", scale=1.3, generator=g) for _ in range(4000)])
    assert stats.kstest(lap, stats.laplace(scale=0.7).cdf).pvalue > 1e-3
    assert stats.kstest(gau, stats.norm(scale=1.3).cdf).pvalue > 1e-3
    # and would reject the other distribution with the same variance
    assert stats.kstest(lap, stats.norm(scale=0.7 * math.sqrt(2)).cdf).pvalue < 1e-3


@pytest.mark.parametrize("eps,q,T", [(1.0, 0.01, 100), (3.0, 0.1, 30), (8.0, 0.064, 80), (0.5, 1.0, 1)])
def test_laplace_epsilon_step_inverts_the_subsampled_composition(eps, q, T):
    e0 = laplace_epsilon_step(epsilon=eps, sample_rate=q, steps=T)
    assert T * math.log(1 + q * (math.exp(e0) - 1)) == pytest.approx(eps, rel=1e-12)
    assert laplace_pure_epsilon(epsilon_step=e0, sample_rate=q, steps=T) == pytest.approx(eps, rel=1e-12)


def test_laplace_epsilon_step_closed_form_values():
    # hand values: q = 1, T = 1: ε₀ = ε; q = 0.01, T = 100, ε = 1:
    # ε₀ = ln(1 + (e^0.01 − 1)/0.01) = ln 2.0050167 = ln 2 + ln 1.0025084 ≈ 0.6956524
    assert laplace_epsilon_step(epsilon=2.0, sample_rate=1.0, steps=1) == pytest.approx(2.0)
    assert laplace_epsilon_step(epsilon=1.0, sample_rate=0.01, steps=100) == pytest.approx(
        math.log(1 + (math.exp(0.01) - 1) / 0.01), rel=1e-12)
    assert laplace_epsilon_step(epsilon=1.0, sample_rate=0.01, steps=100) == pytest.approx(0.6956524, abs=1e-6)


def _cfg(**dpzo):
    return run_config_from_dict({"trainer": "dpzo", "privacy": {"epsilon": 3.0, "delta": 1e-5},
                                 "train": {"epochs": 2, "batch_size": 50}, "dpzo": dpzo})


def test_laplace_plan_ledger_and_claim_agree_with_the_accounting_cross_check():
    cfg = _cfg(noise="laplace", clip=0.5)
    plan = plan_zo(cfg, 1000)
    assert plan.sample_rate == pytest.approx(0.05) and plan.steps == 40
    assert plan.noise_scale == pytest.approx(0.5 / plan.epsilon_step)  # Laplace scale C/ε₀
    ledger = ledger_zo(plan)
    ev = ledger["events"][0]
    assert ev["mechanism"] == "subsampled_laplace" and ev["epsilon_step"] == plan.epsilon_step
    claim = claim_zo(plan, cfg)
    assert claim.accountant == "pure" and claim.epsilon == pytest.approx(3.0, rel=1e-9)
    check = cross_check(ledger, claimed_epsilon=claim.epsilon, delta=cfg.privacy.delta)
    assert check["consistent"], check
    assert check["methods"]["pld"] <= claim.epsilon * 1.01  # (ε, δ) from PLD is at most the pure ε


def test_gaussian_plan_reaches_the_target_epsilon_with_sensitivity_C():
    cfg = _cfg(noise="gaussian", clip=0.5)
    plan = plan_zo(cfg, 1000)
    assert plan.noise_scale == pytest.approx(plan.noise_multiplier * 0.5)
    claim = claim_zo(plan, cfg)
    assert claim.epsilon == pytest.approx(3.0, abs=0.05)
    ledger = ledger_zo(plan)
    assert ledger["events"][0]["mechanism"] == "subsampled_gaussian"
    assert ledger["events"][0]["sensitivity"] == 0.5
    assert cross_check(ledger, claimed_epsilon=claim.epsilon, delta=1e-5)["consistent"]


def test_dpzo_config_validation():
    from dp_audit.errors import UsageError

    with pytest.raises(UsageError, match="dpzo.restore"):
        _cfg(restore="copy")
    with pytest.raises(UsageError, match="perturbation_scale"):
        _cfg(perturbation_scale=0.0)
