"""Cross-layer flattening: flatness-guided sparse prefix tuning (DESIGN.md §4).

"Removing" a layer's prefix zeroes its key and value columns (the attention mask still covers the
virtual tokens) and keeps them zero during training (:class:`PrefixHook` masks their gradient,
per-sample gradients included, and the trainer masks their noise).

Sharpness probe: at a reference prefix P (trained without privacy on the selection data), with a
set R of layers removed, d = ∇L(P⊙m_R)/‖∇L(P⊙m_R)‖ on the probe split and the curve
L(P⊙m_R + α·d) for α ∈ linspace(0, 1, 11); its sharpness is max_α L − L(α=0).
Greedy selection (inferred: the official code hard-codes the result): k rounds, each removes the
layer whose removal (together with those already removed) gives the flattest curve.

This probe is the trainer's own small copy; ``dp_audit.landscapes.sharpness`` holds the generic
probe (the two can be merged: same direction and α grid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from dp_audit.trainers.dpflat_prefix import PrefixHook, PrefixLayout, prefix_weight
from dp_audit.trainers.modeling import Batch, batch_loss, batches


@dataclass(frozen=True)
class SharpnessCurve:
    removed: tuple[int, ...]
    alphas: tuple[float, ...]
    losses: tuple[float, ...]

    @property
    def sharpness(self) -> float:
        return max(self.losses) - self.losses[0]

    def to_dict(self) -> dict:
        return {**asdict(self), "removed": list(self.removed), "alphas": list(self.alphas),
                "losses": list(self.losses), "sharpness": self.sharpness}


def _mean_loss(model, data: Batch, *, batch_size: int, grad_of: torch.Tensor | None = None):
    """Mean cross-entropy over ``data``; with ``grad_of`` also its gradient with respect to it."""
    n = int(data["labels"].shape[0])
    total, grad = 0.0, None
    for b in batches(data, batch_size):
        with torch.set_grad_enabled(grad_of is not None):
            loss = batch_loss(model, b, reduction="sum") / n
        if grad_of is not None:
            (g,) = torch.autograd.grad(loss, grad_of)
            grad = g if grad is None else grad + g
        total += float(loss.detach())
    return total, grad


def sharpness_curve(model, data: Batch, *, hook: PrefixHook, layout: PrefixLayout, removed: Sequence[int],
                    alphas: Sequence[float], batch_size: int = 256) -> SharpnessCurve:
    """The probe at the model's current prefix with ``removed`` layers zeroed; P is left unchanged."""
    w = prefix_weight(model)
    saved_w, saved_mask, was_training = w.detach().clone(), hook.mask, model.training
    mask = layout.mask(tuple(removed), dtype=w.dtype)
    model.eval()
    try:
        hook.mask = mask
        with torch.no_grad():
            w.mul_(mask)
        base = w.detach().clone()
        _, grad = _mean_loss(model, data, batch_size=batch_size, grad_of=w)
        grad = grad * mask
        d = grad / (grad.norm() + 1e-20)
        losses = []
        for a in alphas:
            with torch.no_grad():
                w.copy_(base + float(a) * d)
            losses.append(_mean_loss(model, data, batch_size=batch_size)[0])
    finally:
        with torch.no_grad():
            w.copy_(saved_w)
        hook.mask = saved_mask
        model.train(was_training)
    return SharpnessCurve(removed=tuple(int(x) for x in removed), alphas=tuple(float(a) for a in alphas),
                          losses=tuple(losses))


def greedy_select(candidates: Sequence[int], k: int,
                  curve: Callable[[tuple[int, ...]], SharpnessCurve]) -> tuple[list[int], list[list[SharpnessCurve]]]:
    """k greedy rounds: remove the layer whose removal gives the smallest sharpness (ties: the
    lower loss at α = 0, then the lower index). Returns the removed layers in order and every
    round's curves."""
    removed: list[int] = []
    rounds: list[list[SharpnessCurve]] = []
    for _ in range(k):
        curves = [curve(tuple(removed) + (layer,)) for layer in candidates if layer not in removed]
        if not curves:
            break
        best = min(curves, key=lambda c: (c.sharpness, c.losses[0], c.removed[-1]))
        removed.append(best.removed[-1])
        rounds.append(curves)
    return removed, rounds


def select_layers(model, data: Batch, *, layout: PrefixLayout, k: int, points: int = 11,
                  batch_size: int = 256) -> tuple[list[int], list[list[SharpnessCurve]]]:
    """Greedy selection of ``k`` layers to remove, probed on ``data`` at ``model``'s prefix."""
    hook = PrefixHook(model)
    alphas = [i / (points - 1) for i in range(points)]
    try:
        return greedy_select(range(layout.num_layers), k, lambda removed: sharpness_curve(
            model, data, hook=hook, layout=layout, removed=removed, alphas=alphas, batch_size=batch_size))
    finally:
        hook.remove()


__all__ = ["SharpnessCurve", "greedy_select", "select_layers", "sharpness_curve"]
