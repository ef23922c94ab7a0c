"""What one DP-SGD step releases, measured from the parameters (issue 12, items 4 and 7; review).

With SGD the update of a step is −lr·(Σ_i clip_C(∇ℓ_i) + N(0, σ²C²))/(qn): the clipped sum of the
*sampled* examples, Gaussian noise of std σC, divided by the expected batch size qn (never the
actual batch size). The per-example gradients are recomputed here without Opacus (one backward
per example) and the noise regenerated from the reproducible noise seed, so the check is exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dp_audit.config import run_config_from_dict
from dp_audit.trainers.base import noise_generator
from dp_audit.trainers.dpsgd import DPSetup, counted_steps, make_private, run_steps
from dp_audit.trainers.modeling import INPUT_KEYS
from tests.test_dpflat_mechanisms import tiny_batch
from tests.test_dpzo import tiny_full_model

SIGMA, CLIP, LR, SEED = 0.7, 0.05, 0.5, 11
TOL = 2e-6  # float32 parameters of size ~0.2: rounding of the update is ~1e-8
N, QN, BATCH = 100, 30.0, 7  # qn = 30 while the batch holds 7; Opacus would divide by ⌊100/⌊100/30⌋⌋ = 33


class OneBatch:
    """Yields the same batch forever (stands in for the Poisson loader)."""

    def __init__(self, batch):
        self.tensors = tuple(batch[k] for k in (*INPUT_KEYS, "labels"))

    def __iter__(self):
        while True:
            yield self.tensors


def _expected_clipped_sum(model, batch, clip: float = CLIP) -> list[torch.Tensor]:
    """Σ_i min(1, C/(‖∇ℓ_i‖ + 1e-6))·∇ℓ_i over the examples of ``batch`` (Opacus' flat clipping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(int(batch["labels"].shape[0])):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss = torch.nn.functional.cross_entropy(model(**{k: one[k] for k in INPUT_KEYS}).logits, one["labels"])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        coef = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads):
            t.add_(g, alpha=coef)
    return total


def _cfg_and_setup(*, progress: bool, steps: int):
    """The one-release setting of these tests: SGD, seeded noise, σ, C, q·n = QN."""
    cfg = run_config_from_dict({"train": {"optimizer": "sgd", "lr": LR, "batch_size": 4, "seed": SEED,
                                          "progress": progress},
                                "privacy": {"max_grad_norm": CLIP, "reproducible_noise": True}})
    setup = DPSetup(noise_multiplier=SIGMA, sample_rate=QN / N, steps=steps, max_grad_norm=CLIP,
                    accounted_sample_rate=QN / N, expected_batch_size=QN, reproducible_noise=True)
    return cfg, setup


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_a_step_releases_the_clipped_sum_plus_sigma_c_noise_over_qn(mode):
    """Plausible bugs this catches: the noisy sum divided by the actual batch size (7) or by
    Opacus' ⌊n·(1/⌊n/B⌋)⌋ = 33 instead of qn = 30; ghost clipping's loss scaled by the batch mean twice (its
    first backward uses the mean loss); clipping skipped or at the wrong norm (C = 0.05 clips every
    example here); noise std σ instead of σC; the accountant counting a step twice (two hooks)."""
    cfg, setup = _cfg_and_setup(progress=False, steps=1)
    data = tiny_batch(n=N, seed=3)
    batch = {k: v[:BATCH] for k, v in data.items()}
    model = tiny_full_model()
    params = [p for p in model.parameters() if p.requires_grad]
    expect_sum = _expected_clipped_sum(model, batch)
    before = [p.detach().clone() for p in params]
    gsm, optimizer, _ = make_private(model, SimpleNamespace(train=data), cfg, setup,
                                     generator=torch.Generator().manual_seed(0), mode=mode)
    run_steps(gsm, optimizer, OneBatch(batch), setup, cfg=cfg, desc="")
    g = noise_generator(reproducible=True, train_seed=SEED)
    worst = 0.0
    for p, b, s in zip(params, before, expect_sum):
        noise = torch.normal(mean=0.0, std=SIGMA * CLIP, size=p.shape, generator=g, dtype=p.dtype)
        expect = b - LR * (s + noise) / QN
        worst = max(worst, float((p.detach() - expect).abs().max()))
    assert worst < TOL, worst
    assert counted_steps(optimizer) == 1
    # the data term is not negligible: without it (noise only) the update would differ
    assert max(float(s.abs().max()) for s in expect_sum) * LR / QN > 20 * TOL


def test_progress_output_of_dp_training_shows_no_training_loss(capsys):
    """The progress bar is on by default (train.progress) and its output goes to stderr, which CI
    jobs and ``dp-audit train ... 2> train.log`` write to files. Bug caught: the DP-SGD loop (and
    DP-Flat, which reuses it) and the DP-ZO loop showed the mean loss of every Poisson batch of the
    private split, computed without noise, in the bar's postfix: a per-step statistic of the
    private data released with no unaccounted entry."""
    from dp_audit.trainers.zo import run_zo

    cfg, setup = _cfg_and_setup(progress=True, steps=3)
    data = tiny_batch(n=N, seed=3)
    gsm, optimizer, _ = make_private(tiny_full_model(), SimpleNamespace(train=data), cfg, setup,
                                     generator=torch.Generator().manual_seed(0))
    losses = run_steps(gsm, optimizer, OneBatch({k: v[:BATCH] for k, v in data.items()}), setup, cfg=cfg,
                       desc="DP-SGD")
    model = tiny_full_model()
    steps = run_zo(model, [p for p in model.parameters() if p.requires_grad], data, steps=3, sample_rate=0.5,
                   lr=0.1, scale=1e-3, clip=1.0, noise="gaussian", noise_scale=1.0, private=True,
                   generator=torch.Generator().manual_seed(1), noise_generator=torch.Generator().manual_seed(2),
                   progress=True, desc="DP-ZO")
    err = capsys.readouterr().err
    assert "DP-SGD" in err and "DP-ZO" in err  # the bars were drawn
    assert "loss" not in err, err
    for v in [*losses, *(s.loss for s in steps)]:
        assert f"{v:.3f}" not in err, (v, err)


@pytest.mark.parametrize("sections", [{"trainer": "dpzo"}, {"trainer": "nondp"},
                                      {"trainer": "dpflat", "dpflat": {"blackbox": True, "awp": False,
                                                                       "sparse": False}}])
def test_inject_bug_on_a_trainer_that_does_not_implement_it_is_a_usage_error(sections):
    """``privacy.inject_bug`` is implemented by the Opacus path only (DP-SGD, white-box DP-Flat).
    Bug caught: DP-ZO, non-private and black-box DP-Flat runs accepted it and trained a correct
    pipeline, while dp-audit run labels the run "bug: ..." (a regression suite would expect a
    refutation of a mechanism that was never broken)."""
    from dp_audit.errors import UsageError

    with pytest.raises(UsageError, match="inject_bug"):
        run_config_from_dict({**sections, "privacy": {"inject_bug": "no-noise"}})
    run_config_from_dict({**sections})  # the same config without the bug is valid
    run_config_from_dict({"trainer": "dpsgd", "privacy": {"inject_bug": "no-noise"}})
    run_config_from_dict({"trainer": "dpflat", "model": {"tuning": "prefix"}, "privacy": {"inject_bug": "no-noise"}})


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_injected_no_clip_bug_really_removes_clipping_and_the_ledger_says_what_ran(mode):
    """``inject_bug = "no-clip"``: the release must be the *unclipped* sum plus N(0, σ²C²), divided
    by qn, and the ledger's observed σ must be noise std / clip norm as run. Bug caught: in ghost
    mode Opacus clips with the module's max_grad_norm, not the optimizer's, so the injection only
    changed the optimizer's attributes: the mechanism stayed correct (clipped at C, noise σC) while
    the observed record claimed σ·C/10⁶ (the gate refuted a correct run through its ledger, and
    the black-box regression test of the bug tested nothing)."""
    from dp_audit.trainers.dpsgd import observed_mechanism

    cfg = run_config_from_dict({"train": {"optimizer": "sgd", "lr": LR, "batch_size": 4, "seed": SEED,
                                          "progress": False},
                                "privacy": {"max_grad_norm": CLIP, "reproducible_noise": True,
                                            "inject_bug": "no-clip"}})
    setup = DPSetup(noise_multiplier=SIGMA, sample_rate=QN / N, steps=1, max_grad_norm=CLIP,
                    accounted_sample_rate=QN / N, expected_batch_size=QN, reproducible_noise=True)
    data = tiny_batch(n=N, seed=3)
    batch = {k: v[:BATCH] for k, v in data.items()}
    model = tiny_full_model()
    params = [p for p in model.parameters() if p.requires_grad]
    unclipped = _expected_clipped_sum(model, batch, clip=1e30)
    clipped = _expected_clipped_sum(model, batch, clip=CLIP)
    before = [p.detach().clone() for p in params]
    gsm, optimizer, loader = make_private(model, SimpleNamespace(train=data), cfg, setup,
                                          generator=torch.Generator().manual_seed(0), mode=mode)
    run_steps(gsm, optimizer, OneBatch(batch), setup, cfg=cfg, desc="")
    g = noise_generator(reproducible=True, train_seed=SEED)
    worst = far = 0.0
    for p, b, s, c in zip(params, before, unclipped, clipped):
        noise = torch.normal(mean=0.0, std=SIGMA * CLIP, size=p.shape, generator=g, dtype=p.dtype)
        worst = max(worst, float((p.detach() - (b - LR * (s + noise) / QN)).abs().max()))
        far = max(far, float((p.detach() - (b - LR * (c + noise) / QN)).abs().max()))
    assert worst < 20 * TOL, worst  # unclipped gradients are larger: a little more rounding
    assert far > 100 * TOL  # and the clipped release is far from it (the bug is visible)
    obs = observed_mechanism(optimizer, loader, steps=1, module=gsm)
    # noise std σC over the clip norm that ran (10⁶): σ·C/10⁶
    assert obs["noise_multiplier"] == pytest.approx(SIGMA * CLIP / 1e6)
    assert obs["max_grad_norm"] == pytest.approx(1e6)
