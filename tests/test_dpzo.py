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


# --------------------------------------------------------------------------- train_dpzo as released


def _dpzo_prep(*, n: int, seed: int, lr: float = 0.3):
    from types import SimpleNamespace

    cfg = run_config_from_dict({"trainer": "dpzo", "train": {"lr": lr, "seed": seed, "progress": False},
                                "privacy": {"reproducible_noise": True}, "dpzo": {"restore": "snapshot"}})
    return SimpleNamespace(cfg=cfg, train={"labels": torch.arange(n)})


def _zero_loss(record: list | None = None):
    """A constant per-example loss: every ρ_i = 0, so the released scalar is noise/(qn) alone.
    ``record`` collects the example indices each loss call sees."""
    def loss_fn(model, batch):
        if record is not None:
            record.append(batch["labels"].clone())
        return torch.zeros(batch["labels"].shape[0], dtype=torch.float64)

    return loss_fn


def _released_scalars(plan, *, n: int, steps: int, lr: float = 0.3) -> np.ndarray:
    """train_dpzo's released scalar g of ``steps`` independent runs of one step each (noise seed
    train.seed = 100 + t), measured from the update of a float64 linear model:
    Δθ = −lr·g·z(seed)  ⇒  g = −⟨Δθ, z⟩ / (lr·‖z‖²)."""
    from dataclasses import replace

    from dp_audit.trainers.dpzo import train_dpzo

    model = torch.nn.Linear(4, 3, dtype=torch.float64)
    params = trainable_parameters(model)
    flat = lambda: torch.cat([p.detach().flatten().clone() for p in params])  # noqa: E731
    one = replace(plan, steps=1)
    out = []
    for t in range(steps):
        before = flat()
        (st,) = train_dpzo(model, _dpzo_prep(n=n, seed=100 + t, lr=lr), one,
                           generator=torch.Generator().manual_seed(t), loss_fn=_zero_loss())
        z = torch.cat([d.flatten() for d in direction(params, seed=st.seed)])
        out.append(float(-(flat() - before) @ z / (lr * (z @ z))))
    return np.array(out)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_train_dpzo_update_has_noise_of_scale_noise_over_qn(noise):
    """The released update of train_dpzo, measured from the parameters: with ρ ≡ 0 the scalar is
    noise/(qn), so g·qn/(σC) ~ N(0, 1) (Gaussian) and g·qn/(C/ε₀) ~ Laplace(0, 1) (KS tests, plus
    the sample variance against 1 resp. 2 within 6 standard errors). C = 0.5 and qn = 10 ≠ the
    batch sizes, so plausible bugs show: std σ instead of σC, scale 1/ε₀ instead of C/ε₀, divided
    by the actual batch size |S| or by n, noise drawn twice or not at all, Gaussian and Laplace
    swapped (equal variance is not enough: the KS test separates them)."""
    from dp_audit.trainers.dpzo import ZOPlan

    n, q, clip = 200, 0.05, 0.5
    plan = ZOPlan(noise=noise, sample_rate=q, steps=1, clip=clip, perturbation_scale=1e-3,
                  noise_multiplier=1.7 if noise == "gaussian" else 0.0,
                  epsilon_step=0.8 if noise == "laplace" else 0.0, reproducible_noise=True)
    g = _released_scalars(plan, n=n, steps=1200)
    u = g * (q * n) / plan.noise_scale
    if noise == "gaussian":
        assert plan.noise_scale == pytest.approx(1.7 * clip)
        dist, var = stats.norm(), 1.0
        other = stats.laplace(scale=1 / math.sqrt(2))
    else:
        assert plan.noise_scale == pytest.approx(clip / 0.8)
        dist, var = stats.laplace(), 2.0
        other = stats.norm(scale=math.sqrt(2))
    rel_se = math.sqrt((5 if noise == "laplace" else 2) / u.size)  # sd of the sample variance / variance
    assert abs(float(np.var(u)) / var - 1) < 6 * rel_se, float(np.var(u))
    assert stats.kstest(u, dist.cdf).pvalue > 1e-3
    assert stats.kstest(u, other.cdf).pvalue < 1e-3


def test_dpzo_samples_each_example_at_the_accounted_rate():
    """Which examples train_dpzo's loss sees: over T steps each example is in Binomial(T, q) batches,
    q = B/n (here 64/300: the 1/round(n/B) = 0.2 convention would differ). Binomial test on the
    total, chi-square of the per-example counts against uniform (the last examples, where member
    canaries sit, included), batch-size variance of Poisson sampling nq(1−q). Plausible bugs:
    sampling at 1/round(n/B); fixed-size batches; sequential slices; the plan's rate not the
    ledger's."""
    from dp_audit.trainers.dpzo import ZOPlan, ledger_zo, plan_zo, train_dpzo

    n, steps = 300, 800
    cfg = run_config_from_dict({"trainer": "dpzo", "train": {"batch_size": 64, "epochs": 1}})
    plan = plan_zo(cfg, n)
    q = 64 / n
    assert plan.sample_rate == q and ledger_zo(plan)["events"][0]["sample_rate"] == q
    run = ZOPlan(**{**plan.__dict__, "steps": steps, "reproducible_noise": True})
    seen: list[torch.Tensor] = []
    out = train_dpzo(torch.nn.Linear(2, 2, dtype=torch.float64), _dpzo_prep(n=n, seed=3), run,
                     generator=torch.Generator().manual_seed(5), loss_fn=_zero_loss(seen))
    counts = np.bincount(torch.cat(seen).numpy(), minlength=n) // 2  # each sampled example: ℓ⁺ and ℓ⁻
    sizes = np.array([s.batch_size for s in out])
    assert int(counts.sum()) == int(sizes.sum())
    assert stats.binomtest(int(sizes.sum()), steps * n, q).pvalue > 1e-4
    assert stats.binomtest(int(sizes.sum()), steps * n, 0.2).pvalue < 1e-6
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(float(np.var(sizes, ddof=1)) / (n * q * (1 - q)) - 1) < 0.25


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_dpzo_ledger_observed_record_is_measured_from_the_steps(noise):
    """The DP-ZO ledger's ``observed`` record (the counterpart of DP-SGD's): steps taken, empty-
    batch steps (n = 20, q = 0.05: about a third of the batches are empty), the rate the batches
    were drawn at and the noise each step drew. Bugs caught: empty (noise-only) steps not counted;
    the record copied from the plan instead of the steps (a step run without noise must show up
    as noise scale 0 and an observed ε of ∞, which the gate counts as a refutation); Laplace ε0
    recorded as b/C instead of C/b. Seen failing with ``scale = max(noisy)`` ignoring noise-free
    steps."""
    from dataclasses import replace

    from dp_audit.accounting import observed_epsilon_lower
    from dp_audit.trainers.dpzo import ZOPlan, ledger_zo, observed_zo, train_dpzo
    from dp_audit.trainers.zo import run_zo

    n, q, clip = 20, 0.05, 0.5
    plan = ZOPlan(noise=noise, sample_rate=q, steps=60, clip=clip, perturbation_scale=1e-3,
                  noise_multiplier=1.3 if noise == "gaussian" else 0.0,
                  epsilon_step=0.7 if noise == "laplace" else 0.0, reproducible_noise=True)
    model = torch.nn.Linear(2, 2, dtype=torch.float64)
    steps = train_dpzo(model, _dpzo_prep(n=n, seed=1), plan, generator=torch.Generator().manual_seed(2),
                       loss_fn=_zero_loss())
    obs = observed_zo(steps, plan)
    empty = sum(s.batch_size == 0 for s in steps)
    assert 5 <= empty < 60 and obs["empty_batch_steps"] == empty
    assert obs["steps"] == obs["planned_steps"] == 60 and obs["sample_rate"] == q
    assert obs["noise"] == noise and obs["noise_scale"] == pytest.approx(plan.noise_scale)
    assert obs["expected_batch_size"] == pytest.approx(q * n)
    if noise == "gaussian":
        assert obs["noise_multiplier"] == pytest.approx(1.3)
    else:
        assert obs["epsilon_step"] == pytest.approx(0.7) and obs["laplace_scale"] == pytest.approx(clip / 0.7)
    ledger = ledger_zo(plan, observed=obs)
    lo = observed_epsilon_lower(ledger, delta=1e-5)
    assert 0 < lo < math.inf
    # one step of the run without noise (the noise "not applied" bug): the record says so
    quiet = run_zo(model, trainable_parameters(model), {"labels": torch.arange(n)}, steps=1, sample_rate=q, lr=0.1,
                   scale=1e-3, clip=clip, noise="none", noise_scale=0.0, private=True,
                   generator=torch.Generator().manual_seed(3), loss_fn=_zero_loss())
    bad = observed_zo(steps[:-1] + quiet, plan)
    assert bad["noise_scale"] == 0.0 and "none" in bad["noise"]
    assert observed_epsilon_lower(ledger_zo(plan, observed=bad), delta=1e-5) == math.inf
    slower = observed_zo([replace(s, sample_rate=2 * q) for s in steps], plan)
    assert slower["sample_rate"] == 2 * q  # the rate the batches were drawn at, not the plan's


def test_observed_laplace_lower_bound_closed_form_and_order():
    """The observed ε of Laplace steps is a lower bound: one unsampled step has the closed form
    ε(δ) = ε0 + 2·ln(1 − δ) (δ(ε) = 1 − e^{(ε−ε0)/2}); subsampled runs lie below the pessimistic
    PLD and below pure composition T·ln(1 + q(e^{ε0} − 1)). Bugs caught: the pessimistic
    (upper) estimate used as a lower bound; parameter given as C/b; the sampling rate ignored."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    from dp_audit.accounting import laplace_epsilon_lower, laplace_pure_epsilon

    def rec(b, q, t):
        return [{"mechanism": "subsampled_laplace", "laplace_scale": b, "sensitivity": 0.5, "sample_rate": q,
                 "steps": t}]

    assert laplace_epsilon_lower(rec(0.25, 1.0, 1), delta=1e-5) == pytest.approx(2.0 + 2 * math.log(1 - 1e-5),
                                                                                 abs=2e-3)
    lo = laplace_epsilon_lower(rec(0.5, 0.05, 200), delta=1e-5)  # ε0 = C/b = 1
    hi = pld_lib.from_laplace_mechanism(1.0, sensitivity=1.0, value_discretization_interval=1e-3,
                                        sampling_prob=0.05).self_compose(200).get_epsilon_for_delta(1e-5)
    assert 0.9 * hi < lo < hi < laplace_pure_epsilon(epsilon_step=1.0, sample_rate=0.05, steps=200)
    assert laplace_epsilon_lower(rec(0.0, 0.05, 10), delta=1e-5) == math.inf


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_observed_record_of_steps_with_different_clips_stays_a_lower_bound(noise):
    """Two kinds of steps, same noise scale b = 2: T steps clipped at C = 0.2 (per-step ε0 =
    C/b = 0.1) and T at C = 2 (ε0 = 1). The true ε is that of the composition of both kinds;
    the record must summarise them by values whose ε is at most that, i.e. the *smallest* clip
    (ε0 = 0.1 for all 2T steps). Bug caught: the largest clip kept as the sensitivity (ε0 = 1 for
    all 2T steps, about twice the run's ε), a gate then "refutes" a run that keeps its claim.
    Seen failing with ``max(clips)`` in observed_zo."""
    from dp_audit.accounting import observed_epsilon_lower
    from dp_audit.trainers.dpzo import ZOPlan, ledger_zo, observed_zo
    from dp_audit.trainers.zo import ZOStep

    b, q, t = 2.0, 1.0, 20

    def step(c):
        return ZOStep(seed=0, batch_size=5, gradient=0.0, loss=0.0, clipped_fraction=0.0, noise=noise,
                      noise_scale=b, clip=c, normaliser=5.0, sample_rate=q)

    plan = ZOPlan(noise=noise, sample_rate=q, steps=2 * t, clip=2.0, perturbation_scale=1e-3,
                  noise_multiplier=1.0 if noise == "gaussian" else 0.0,
                  epsilon_step=1.0 if noise == "laplace" else 0.0, reproducible_noise=True)
    obs = observed_zo([step(0.2)] * t + [step(2.0)] * t, plan)
    lo = observed_epsilon_lower(ledger_zo(plan, observed=obs), delta=1e-5)
    if noise == "laplace":
        from dp_accounting import dp_event, pld

        acc = pld.PLDAccountant(value_discretization_interval=1e-4)
        acc.compose(dp_event.LaplaceDpEvent(noise_multiplier=b / 0.2), t)
        acc.compose(dp_event.LaplaceDpEvent(noise_multiplier=b / 2.0), t)
        true = acc.get_epsilon(1e-5)
        assert lo <= true
        assert obs["epsilon_step"] == pytest.approx(0.1)
    else:
        from dp_audit.estimate.gdp_math import gdp_epsilon

        true = gdp_epsilon(1e-5, math.sqrt(t * (0.2 / b) ** 2 + t * (2.0 / b) ** 2))
        assert lo <= true
        assert obs["noise_multiplier"] == pytest.approx(b / 0.2)
    assert obs["sensitivity"] == 0.2


@pytest.mark.parametrize("n", [5, 16, 64, 64 * 3, 64 * 3 + 7, 64 * 3 + 16, 64 * 3 + 40])
def test_perturb_in_slices_draws_the_same_z_as_one_call(monkeypatch, n):
    """Bug caught: z drawn in slices (to bound the memory of a large tensor's z) differing from
    :func:`direction`'s single draw, e.g. a tail slice under 16 elements that torch's CPU normal
    fills by another path: the training update would then not follow the z the audit replays."""
    import dp_audit.trainers.zo as zo

    monkeypatch.setattr(zo, "Z_SLICE", 64)
    params = [torch.zeros(n), torch.zeros(3, n)]
    perturb_(params, seed=9, scale=1.0)
    for p, z in zip(params, direction(params, seed=9)):
        assert torch.equal(p, z)


def _unfused_step(model, params, batch, *, seed, lam, lr, clip, normaliser):
    """The reference: restore θ in place (+λz), then update (−η·g·z): four regenerations of z."""
    est = spsa(model, params, batch, seed=seed, scale=lam, restore="inplace")
    g = float(est.scalars.double().clamp(-clip, clip).sum()) / normaliser
    perturb_(params, seed=seed, scale=-lr * g)
    return g


@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_fused_restore_and_update_is_the_unfused_step_numerically(lam):
    """Bug caught: the one-pass restore-and-update θ ← (θ − λz) + (λ − η·g)·z with a wrong sign or
    a missing λ (θ left at θ − λz), or a different z/gradient than the reference step (restore
    +λz, then −η·g·z): the fused step must release the same g and land within a few ulps of it."""
    clip, lr, normaliser = 0.5, 0.05, 7.0
    fused, ref = tiny_full_model(), tiny_full_model()
    pf, pr = trainable_parameters(fused), trainable_parameters(ref)
    batch = tiny_batch(n=6)
    theta = [p.detach().clone() for p in pf]
    st = zo_step(fused, pf, batch, seed=21, scale=lam, lr=lr, clip=clip, noise="none", noise_scale=0.0,
                 normaliser=normaliser, generator=None, restore="inplace")
    g = _unfused_step(ref, pr, batch, seed=21, lam=lam, lr=lr, clip=clip, normaliser=normaliser)
    assert st.gradient == g  # the same two forwards at the same θ ± λz: the same released scalar
    moved = 0.0
    for a, b, t, z in zip(pf, pr, theta, direction(pf, seed=21)):
        bound = 3 * EPS32 * (t.abs() + 2 * lam * z.abs() + abs(lr * g) * z.abs())
        assert bool(((a.detach() - b.detach()).abs() <= bound).all())
        assert bool(((a.detach() - (t - lr * g * z)).abs() <= bound).all())
        moved = max(moved, float((a.detach() - t).abs().max()))
    assert moved > 1e3 * EPS32  # the update happened (g != 0)


def test_zo_step_runs_two_forwards_and_regenerates_z_three_times(monkeypatch):
    """Bug caught: a DP-ZO step doing more work than MeZO's seed trick needs: a third forward, a
    materialised or copied z, or the separate restore (+λz) and update (−η·g·z) passes (four
    regenerations instead of three)."""
    import dp_audit.trainers.zo as zo

    model = tiny_full_model()
    params = trainable_parameters(model)
    calls = {"perturb": 0, "forward": 0}
    real = zo.perturb_

    def counting(*a, **k):
        calls["perturb"] += 1
        return real(*a, **k)

    monkeypatch.setattr(zo, "perturb_", counting)
    model.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    zo_step(model, params, tiny_batch(n=6), seed=4, scale=1e-3, lr=0.1, clip=1.0, noise="gaussian", noise_scale=1.0,
            normaliser=6.0, generator=torch.Generator().manual_seed(0), restore="inplace", chunk=64)
    assert calls == {"perturb": 3, "forward": 2}


def test_zo_step_error_after_the_forwards_restores_theta():
    """Bug caught: with the fused update θ is left at θ − λz while g is computed; an error there
    (noise requested without a generator) must not leave the model perturbed."""
    model = tiny_full_model()
    params = trainable_parameters(model)
    theta = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="generator"):
        zo_step(model, params, tiny_batch(n=4), seed=2, scale=0.5, lr=0.1, clip=1.0, noise="gaussian",
                noise_scale=1.0, normaliser=4.0, generator=None, restore="inplace")
    for p, t, z in zip(params, theta, direction(params, seed=2)):
        assert bool(((p.detach() - t).abs() <= 2 * EPS32 * (t.abs() + 2 * 0.5 * z.abs())).all())
