"""Zeroth-order machinery shared by DP-ZO and black-box DP-Flat (DESIGN.md §4).

SPSA two-point estimates with MeZO's seed trick (Malladi et al. 2023): the direction z ~ N(0, I)
is never stored; it is regenerated from a public seed each time it is needed, in slices (perturb
+λz, −2λz in place, then one pass +(λ − η·g)·z that restores θ and applies the update: three
regenerations of z per step, where MeZO's +λz then −η·g·z takes four). Forward passes (two per
step) run in eval mode under ``torch.inference_mode``.

Restoring θ: in float32, ``((θ + λz) − 2λz) + λz`` is not bit-identical to θ in general (three
roundings). ``restore = "inplace"`` (MeZO, stores nothing) leaves an error of at most a few ulps
of ``|θ| + 2λ|z|`` per coordinate and step (tested with that bound; the fused restore-and-update
of :func:`zo_step` stays within the same bound of θ − η·g·z); ``restore = "snapshot"``
keeps one float32 copy of the trainable parameters during the two evaluations and restores them
bit-exactly (costs one extra copy of the trainable parameters, nothing for z).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from dp_audit.trainers.modeling import Batch, logits_of, subset

RESTORES = ("inplace", "snapshot")
PerExampleLoss = Callable[[torch.nn.Module, Batch], torch.Tensor]


def direction(params: Sequence[torch.Tensor], *, seed: int) -> list[torch.Tensor]:
    """z for ``seed`` (materialised: for tests only; the training path never stores z)."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


# z is drawn in slices of this many elements, so that a large tensor (MiniLM's 11.7 M-weight word
# embedding: 45 MB) never has its whole z in memory; the values are those of one randn call on the
# whole tensor (torch's CPU normal fills blocks of 16 and redraws the last 16 of a call: every slice
# but the last is a multiple of 16 long and the last is >= 16 long, tested in tests/test_dpzo.py)
Z_SLICE = 2**18


def _slices(n: int, size: int | None = None) -> list[tuple[int, int]]:
    size = size or Z_SLICE
    bounds = [*range(0, n, size), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 16:
        bounds.pop(-2)  # a tail under 16 elements joins the previous slice
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], *, seed: int, scale: float) -> None:
    """θ ← θ + scale·z(seed), one parameter tensor (and one slice of at most :data:`Z_SLICE`
    elements) at a time: z is regenerated, never kept, and equals :func:`direction`'s."""
    g = torch.Generator().manual_seed(int(seed))
    for p in params:
        if not p.is_contiguous():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype), alpha=float(scale))
            continue
        flat = p.view(-1)
        for a, b in _slices(flat.numel()):
            flat[a:b].add_(torch.randn(b - a, generator=g, dtype=p.dtype), alpha=float(scale))


def cross_entropy_each(model, batch: Batch) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits_of(model, batch), batch["labels"], reduction="none")


def _losses(model, data: Batch, loss_fn: PerExampleLoss, chunk: int) -> torch.Tensor:
    n = int(data["labels"].shape[0])
    with torch.inference_mode():
        return torch.cat([loss_fn(model, subset(data, slice(s, s + chunk))) for s in range(0, n, chunk)]) \
            if n else torch.zeros(0)


@dataclass(frozen=True)
class SPSA:
    scalars: torch.Tensor  # per-example ρ_i = (ℓ(θ+λz; x_i) − ℓ(θ−λz; x_i)) / (2λ)
    loss_plus: torch.Tensor
    loss_minus: torch.Tensor


def spsa(model, params: Sequence[torch.Tensor], data: Batch, *, seed: int, scale: float,
         loss_fn: PerExampleLoss = cross_entropy_each, restore: str = "inplace", chunk: int = 256,
         leave_minus: bool = False) -> SPSA:
    """Per-example two-point estimates along z(seed); θ is restored afterwards (see module doc).

    ``leave_minus`` (``restore = "inplace"`` only): θ is left at θ − λz, and the caller finishes
    with one pass θ ← θ + (λ − η·g)·z that restores and updates at once (:func:`zo_step`: three
    regenerations of z per step instead of four). On an exception θ is restored as usual."""
    if restore not in RESTORES:
        raise ValueError(f"restore must be one of {RESTORES}")
    if leave_minus and restore != "inplace":
        raise ValueError("leave_minus needs restore = 'inplace'")
    was_training = model.training
    model.eval()
    snap = [p.detach().clone() for p in params] if restore == "snapshot" else None
    done = False
    try:
        perturb_(params, seed=seed, scale=scale)
        plus = _losses(model, data, loss_fn, chunk)
        perturb_(params, seed=seed, scale=-2 * scale)
        minus = _losses(model, data, loss_fn, chunk)
        done = True
    finally:
        if snap is not None:
            with torch.no_grad():
                for p, s in zip(params, snap):
                    p.copy_(s)
        elif not (done and leave_minus):
            perturb_(params, seed=seed, scale=scale)
        model.train(was_training)
    return SPSA(scalars=(plus - minus) / (2 * scale), loss_plus=plus, loss_minus=minus)


def clip_scalars(scalars: torch.Tensor, clip: float) -> torch.Tensor:
    return scalars.clamp(-clip, clip)


def sample_noise(kind: str, *, scale: float, generator: torch.Generator | None) -> float:
    """One draw of N(0, scale²) (``gaussian``) or Laplace(0, scale) (``laplace``: the difference
    of two Exp(1) draws times ``scale``), from ``generator``; ``none`` gives 0."""
    if kind == "none" or scale == 0:
        return 0.0
    if generator is None:
        raise ValueError("sample_noise needs an explicit generator")
    if kind == "gaussian":
        return float(torch.randn(1, generator=generator, dtype=torch.float64)) * scale
    if kind == "laplace":
        e = torch.empty(2, dtype=torch.float64).exponential_(1.0, generator=generator)
        return float(e[0] - e[1]) * scale
    raise ValueError(f"unknown noise {kind!r}")


@dataclass(frozen=True)
class ZOStep:
    seed: int
    batch_size: int
    gradient: float  # the released scalar g (noisy, divided by the normaliser)
    loss: float  # mean of (ℓ+ + ℓ−)/2 over the batch (nan for an empty batch)
    clipped_fraction: float
    # the mechanism as run (the ledger's ``observed`` record of DP-ZO, trainers/dpzo.py):
    noise: str = "none"  # the noise kind the step drew
    noise_scale: float = 0.0  # std (gaussian) or scale b (laplace) it was drawn with (0 for none)
    clip: float | None = None  # the clip bound C applied to the scalars (None: no clipping)
    normaliser: float | None = None  # what the noisy sum was divided by
    sample_rate: float | None = None  # the Poisson rate its batch was drawn at (run_zo)


def zo_step(model, params: Sequence[torch.Tensor], data: Batch, *, seed: int, scale: float, lr: float,
            clip: float | None, noise: str, noise_scale: float, normaliser: float | None,
            generator: torch.Generator | None, loss_fn: PerExampleLoss = cross_entropy_each, restore: str = "inplace",
            chunk: int = 256) -> ZOStep:
    """One (DP-)ZO step on the sampled examples ``data``:
    g = (Σ_i clip(ρ_i, C) + noise) / normaliser, then θ ← θ − lr·g·z(seed).

    ``normaliser``: the expected batch size qn for DP (a data-independent constant); None: the
    actual batch size (non-private MeZO). ``clip``: None for no clipping (non-private).
    ``generator`` draws the noise only (None is allowed without noise)."""
    n = int(data["labels"].shape[0])
    fused = bool(n) and restore == "inplace"  # θ left at θ − λz: restore and update in one pass
    at_minus = False
    try:
        if n:
            est = spsa(model, params, data, seed=seed, scale=scale, loss_fn=loss_fn, restore=restore, chunk=chunk,
                       leave_minus=fused)
            at_minus = fused
            rho = est.scalars.double()
            clipped = rho if clip is None else clip_scalars(rho, clip)
            total = float(clipped.sum())
            frac = 0.0 if clip is None else float((rho.abs() > clip).double().mean())
            loss = float(((est.loss_plus + est.loss_minus) / 2).mean())
        else:
            total, frac, loss = 0.0, 0.0, math.nan
        total += sample_noise(noise, scale=noise_scale, generator=generator)
        denom = normaliser if normaliser is not None else max(n, 1)
        g = total / denom
    except BaseException:
        if at_minus:  # put θ back before the error propagates
            perturb_(params, seed=seed, scale=scale)
        raise
    # fused: (θ − λz) + (λ − η·g)·z; otherwise θ − η·g·z
    perturb_(params, seed=seed, scale=(scale if fused else 0.0) - lr * g)
    drew = noise if (noise != "none" and noise_scale != 0) else "none"
    return ZOStep(seed=seed, batch_size=n, gradient=g, loss=loss, clipped_fraction=frac, noise=drew,
                  noise_scale=float(noise_scale) if drew != "none" else 0.0,
                  clip=None if clip is None else float(clip), normaliser=float(denom))


def draw_seed(generator: torch.Generator) -> int:
    """A public per-step seed drawn from the training generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def poisson_indices(n: int, q: float, *, generator: torch.Generator) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=generator) < q).flatten()


def run_zo(model, params: Sequence[torch.Tensor], data: Batch, *, steps: int, sample_rate: float, lr: float,
           scale: float, clip: float | None, noise: str, noise_scale: float, private: bool,
           generator: torch.Generator, noise_generator: torch.Generator | None = None,
           sampling_generator: torch.Generator | None = None,
           loss_fn: PerExampleLoss = cross_entropy_each, restore: str = "inplace",
           chunk: int = 256, progress: bool = False, desc: str = "ZO") -> list[ZOStep]:
    """``steps`` Poisson-sampled ZO steps. ``private``: divide by the expected batch size qn
    (DP-ZO); otherwise by the actual batch size (non-private MeZO). ``generator`` draws the
    public direction seeds, and the batches unless ``sampling_generator`` is given (DP-ZO: a secret
    one, so the batches are not replayable); ``noise_generator`` the noise (required when there is
    noise: kept apart so that the public seeds never reveal it)."""
    if noise != "none" and noise_scale != 0 and noise_generator is None:
        raise ValueError("run_zo: noisy steps need an explicit noise_generator")
    n = int(data["labels"].shape[0])
    out: list[ZOStep] = []
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for _ in range(steps):
        idx = poisson_indices(n, sample_rate, generator=sampling_generator or generator)
        seed = draw_seed(generator)
        st = zo_step(model, params, subset(data, idx), seed=seed, scale=scale, lr=lr, clip=clip, noise=noise,
                     noise_scale=noise_scale, normaliser=sample_rate * n if private else None,
                     generator=noise_generator, loss_fn=loss_fn, restore=restore, chunk=chunk)
        out.append(dataclasses.replace(st, sample_rate=float(sample_rate)))
        bar.update(1)
        if not private and not math.isnan(out[-1].loss):  # DP: a private batch's loss, no noise: not shown
            bar.set_postfix(loss=f"{out[-1].loss:.3f}")
    bar.close()
    return out


__all__ = ["RESTORES", "SPSA", "ZOStep", "clip_scalars", "cross_entropy_each", "direction", "draw_seed",
           "perturb_", "poisson_indices", "run_zo", "sample_noise", "spsa", "zo_step"]
