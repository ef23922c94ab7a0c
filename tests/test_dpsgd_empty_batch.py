"""Empty Poisson batches in DP-SGD (issue 12 item 4): a noise-only step that the accountant counts.

With Poisson sampling at rate q a batch is empty with probability (1 − q)^n. The mechanism still
releases N(0, σ²C²)/(qn) per coordinate (the clipped sum is 0), and the accountant composes the
step like any other; skipping it, or crashing, changes what was run. With SGD the parameter
update of such a step is exactly −lr·noise/(qn).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from dp_audit.config import run_config_from_dict
from dp_audit.trainers.base import noise_generator
from dp_audit.trainers.dpsgd import (DPSetup, counted_steps, is_empty, make_private, noise_only_step,
                                     observed_mechanism, run_steps)
from dp_audit.trainers.modeling import INPUT_KEYS
from tests.test_dpflat_mechanisms import tiny_batch
from tests.test_dpzo import tiny_full_model

SIGMA, CLIP, LR, QN, STEPS, SEED = 1.3, 0.5, 0.5, 5.0, 6, 3


class EmptyLoader:
    """Yields only empty batches (the forced case), with the shapes of ``batch``."""

    def __init__(self, batch):
        self.tensors = tuple(batch[k][:0] for k in (*INPUT_KEYS, "labels"))

    def __iter__(self):
        while True:
            yield self.tensors


def _setup(reproducible: bool) -> tuple:
    cfg = run_config_from_dict({"train": {"optimizer": "sgd", "lr": LR, "batch_size": 5, "seed": SEED,
                                          "progress": False},
                                "privacy": {"max_grad_norm": CLIP, "reproducible_noise": reproducible}})
    setup = DPSetup(noise_multiplier=SIGMA, sample_rate=QN / 50, steps=STEPS, max_grad_norm=CLIP,
                    accounted_sample_rate=QN / 50, expected_batch_size=QN, reproducible_noise=reproducible)
    return cfg, setup


def _run_empty_steps(mode: str, *, reproducible: bool):
    """STEPS forced-empty steps through run_steps; returns (optimizer, loader, per-step updates)."""
    cfg, setup = _setup(reproducible)
    batch = tiny_batch(n=50)
    model = tiny_full_model()
    gsm, optimizer, loader = make_private(model, SimpleNamespace(train=batch), cfg, setup,
                                          generator=torch.Generator().manual_seed(0), mode=mode)
    params = list(optimizer.params)
    snaps: list[list[torch.Tensor]] = []

    def before_step(step: int, b: dict) -> None:
        assert is_empty(b)
        snaps.append([p.detach().clone() for p in params])

    run_steps(gsm, optimizer, EmptyLoader(batch), setup, cfg=cfg, desc="", before_step=before_step)
    snaps.append([p.detach().clone() for p in params])
    updates = [[b - a for a, b in zip(snaps[t], snaps[t + 1])] for t in range(STEPS)]
    return optimizer, loader, params, updates


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_empty_batches_release_exactly_the_seeded_noise_and_are_counted(mode):
    """Plausible bugs: an empty batch crashes Opacus ('Per sample gradient is not initialized',
    today's code); it is skipped (parameters do not move, the accountant counts fewer steps); the
    noise is divided by the actual batch size (0 or 1) instead of qn; its std is σ instead of σC.
    With seeded noise the update must equal −lr·N(0, σ²C²)/(qn) drawn from the noise seed, as
    Opacus draws it (one normal tensor per parameter, in order)."""
    optimizer, loader, params, updates = _run_empty_steps(mode, reproducible=True)
    g = noise_generator(reproducible=True, train_seed=SEED)
    for t in range(STEPS):
        for p, d in zip(params, updates[t]):
            noise = torch.normal(mean=0.0, std=SIGMA * CLIP, size=p.shape, generator=g, dtype=p.dtype)
            assert torch.allclose(d, -LR * noise / QN, rtol=1e-4, atol=1e-6), (mode, t)
    assert counted_steps(optimizer) == STEPS
    obs = observed_mechanism(optimizer, loader, steps=STEPS)
    assert obs["steps"] == STEPS and obs["planned_steps"] == STEPS
    assert obs["noise_multiplier"] == pytest.approx(SIGMA) and obs["expected_batch_size"] == QN


def test_empty_batch_updates_with_os_entropy_noise_have_std_sigma_c_over_qn():
    """The default noise source (not replayable): the standardised updates −Δθ·qn/(lr·σC) over
    every coordinate and step are N(0, 1) (KS test, and the sample variance within 6 standard
    errors of 1). Plausible bugs: std σ (C ≠ 1 here), normaliser 1 instead of qn, noise added
    twice (variance 2), no noise on an empty batch."""
    _, _, _, updates = _run_empty_steps("hooks", reproducible=False)
    z = np.concatenate([(-d * QN / (LR * SIGMA * CLIP)).flatten().numpy() for step in updates for d in step])
    assert z.size > 10_000
    var_se = math.sqrt(2 / z.size)
    assert abs(float(np.var(z)) - 1.0) < 6 * var_se, float(np.var(z))
    assert stats.kstest(z, "norm").pvalue > 1e-4


class _Wrapper:
    """The shape of DP-Flat's step wrapper: the DP optimizer as ``.optimizer``, a callback after the step."""

    def __init__(self, optimizer):
        self.optimizer, self.after = optimizer, 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def step(self):
        out = self.optimizer.step()
        self.after += 1
        return out


def test_noise_only_step_through_a_wrapper_runs_the_wrapper_and_the_step_hooks():
    """The helper DP-Flat uses (run_steps with its step wrapper): the wrapper's step is the one
    called (its after-step callback runs), the accountant and any chained step hook see the step,
    and p.grad holds noise only. Plausible bug: the helper steps the inner optimizer directly
    (DP-Flat's AWP removal and distillation would be skipped on empty batches)."""
    cfg, setup = _setup(True)
    batch = tiny_batch(n=50)
    gsm, optimizer, _ = make_private(tiny_full_model(), SimpleNamespace(train=batch), cfg, setup,
                                     generator=torch.Generator().manual_seed(0))
    seen = []
    prev = optimizer.step_hook

    def hook(opt):
        prev(opt)
        seen.append([p.grad.detach().clone() for p in opt.params])

    optimizer.attach_step_hook(hook)
    wrapper = _Wrapper(optimizer)
    wrapper.zero_grad()
    noise_only_step(wrapper)
    assert wrapper.after == 1 and counted_steps(optimizer) == 1 and len(seen) == 1
    g = noise_generator(reproducible=True, train_seed=SEED)
    for p, grad in zip(optimizer.params, seen[0]):
        expect = torch.normal(mean=0.0, std=SIGMA * CLIP, size=p.shape, generator=g, dtype=p.dtype) / QN
        assert torch.allclose(grad, expect, rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="DPOptimizer"):
        noise_only_step(object())


def test_dpsgd_run_with_batch_size_2_counts_every_step(tiny_config, tmp_path):
    """End to end (the issue's reproduction): batch_size = 2 on the tiny config, q = 2/n, so each
    step is empty with probability (1 − 2/n)^n ≈ e^−2 ≈ 0.135 and a run of 160 steps has an empty
    batch with probability 1 − 0.865^160 > 1 − 1e−9. Plausible bugs: the crash of today's code; the
    empty steps skipped (Opacus' accountant would count fewer steps than the ledger claims)."""
    from dp_audit.io import read_json
    from dp_audit.trainers.base import train_run

    run = train_run(tiny_config(trainer="dpsgd", train={"batch_size": 2}), tmp_path / "r", progress=False)
    ev = read_json(run / "ledger.json")["events"][0]
    n = round(2 / ev["sample_rate"])
    assert ev["steps"] == round(n / 2) and ev["observed"]["steps"] == ev["steps"] == ev["observed"]["planned_steps"]
