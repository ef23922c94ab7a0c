"""Within-layer flattening: one-step adversarial weight perturbation (AWP, Wu et al. 2020) on the
prefix P, in three modes (DESIGN.md §4):

- ``paper``: on one micro-batch of each logical batch, during the first ``awp_epoch_fraction`` of
  the steps, v = γ·‖P‖_F·∇L/(‖∇L‖_F + 1e-20) from the **raw** mean loss of that private
  micro-batch (no clipping, no noise); P ← P + v; the DP gradient of the whole logical batch is
  computed at P + v; the optimiser steps; then v is removed. v is a function of private data
  outside the mechanism: not accounted. The official code takes the first micro-batch of a
  *shuffled* loader; Opacus' Poisson sampler returns indices in increasing order (and member
  canaries sit at the end of the private split), so the micro-batch is drawn uniformly without
  replacement from the batch with the training generator (:meth:`AWP.micro_batch_indices`).
  ‖P‖ is the norm of the whole embedding (official): with removed layers, ``removed_norm_sq``
  adds the squared norm of their columns, which the official code keeps in the embedding and
  masks in the forward pass (here they are zeroed, so their initial values are passed in).
- ``dpsat``: the same v, but from the previous step's released (clipped, noised) gradient
  (DP-SAT, Park et al. ICML 2023): post-processing, no privacy cost. No perturbation at step 0.
- ``per-example``: every example i gets its own v_i = γ‖P‖·∇ℓ_i(P)/‖∇ℓ_i(P)‖ and its clipped
  term is clip(∇ℓ_i(P + v_i)): a function of x_i alone, so the sensitivity stays C. Implemented
  with the per-example prefix copies of :class:`~dp_audit.trainers.dpflat_prefix.PrefixHook`
  (one extra forward/backward for all v_i; the parameters themselves are not moved).

Removing v restores P exactly when the step did not move it: P ← P₀ + (P_after − (P₀ + v)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from dp_audit.trainers.dpflat_prefix import PrefixHook, prefix_weight
from dp_audit.trainers.modeling import model_inputs, Batch, subset

AWP_MODES = ("paper", "dpsat", "per-example")
_EPS = 1e-20


def awp_vector(direction: torch.Tensor, *, weight_norm: float, gamma: float) -> torch.Tensor:
    """γ·‖P‖·d/(‖d‖ + 1e-20)."""
    return gamma * weight_norm * direction / (direction.norm() + _EPS)


def awp_rows(directions: torch.Tensor, *, weight_norm: float, gamma: float) -> torch.Tensor:
    """Per-example version: row i of (B, ...) normalised on its own."""
    norms = directions.flatten(1).norm(dim=1).view(-1, *([1] * (directions.dim() - 1)))
    return gamma * weight_norm * directions / (norms + _EPS)


def _no_opacus_hooks(model):
    class _Ctx:
        def __enter__(self):
            self.on = getattr(model, "hooks_enabled", False)
            if self.on:
                model.disable_hooks()

        def __exit__(self, *exc):
            if self.on:
                model.enable_hooks()

    return _Ctx()


def raw_prefix_gradient(model, batch: Batch) -> torch.Tensor:
    """∇_P of the raw mean cross-entropy of ``batch`` (Opacus hooks off: no per-sample state)."""
    weight = prefix_weight(model)
    with _no_opacus_hooks(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        logits = model(**model_inputs(batch)).logits
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        (grad,) = torch.autograd.grad(loss, weight)
    return grad.detach()


def per_example_prefix_gradients(model, hook: PrefixHook, batch: Batch) -> torch.Tensor:
    """(B, T, D): row i = ∇ of ℓ_i with respect to example i's copy of the prefix, i.e. ∇_P ℓ_i(P)
    (masked columns zeroed). One forward and one backward pass."""
    saved = hook.offset
    hook.offset, hook.capture = None, True
    try:
        with _no_opacus_hooks(model), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            logits = model(**model_inputs(batch)).logits
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
            (grads,) = torch.autograd.grad(loss, hook.captured)
    finally:
        hook.capture, hook.captured, hook.offset = False, None, saved
    grads = grads.detach()
    return grads * hook.mask if hook.mask is not None else grads


@dataclass
class AWP:
    """AWP controller: call :meth:`before_step` before the DP forward of each logical batch and
    :meth:`after_step` after the optimiser step (removes v), :meth:`restore` at the end."""

    model: torch.nn.Module  # the (Opacus-wrapped) model
    hook: PrefixHook
    mode: str
    gamma: float
    active_steps: int  # AWP runs on steps [0, active_steps)
    micro_batch: int  # paper mode: size of the micro-batch (at most the batch)
    generator: torch.Generator | None = None  # paper mode: draws the micro-batch (the training generator)
    removed_norm_sq: float = 0.0  # ‖P‖² of the removed layers' columns (official radius: the full embedding)
    applied: int = 0
    rel_norms: list[float] = field(default_factory=list)  # ‖v‖/‖P‖ per application (mean over examples)
    _orig: torch.Tensor | None = None
    _pert: torch.Tensor | None = None
    _prev_noisy: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in AWP_MODES:
            raise ValueError(f"awp mode must be one of {AWP_MODES}")
        if self.mode == "paper" and (self.generator is None or self.micro_batch < 1):
            raise ValueError("paper-mode AWP needs a generator and micro_batch >= 1")

    @property
    def weight(self) -> torch.nn.Parameter:
        return prefix_weight(self.model)

    def radius_norm(self) -> float:
        """‖P‖ of the AWP radius γ‖P‖: the current prefix plus the removed columns (if any)."""
        return float((float(self.weight.detach().norm()) ** 2 + self.removed_norm_sq) ** 0.5)

    def micro_batch_indices(self, n: int) -> torch.Tensor:
        """min(micro_batch, n) positions of a batch of n, uniformly without replacement."""
        return torch.randperm(n, generator=self.generator)[: min(self.micro_batch, n)]

    def before_step(self, step: int, batch: Batch) -> None:
        """Apply v for this step. An empty (Poisson) batch gets no perturbation: v = 0 in paper and
        per-example modes (no private example to compute it from); DP-SAT still uses the previous
        release (public)."""
        self.restore()
        self.hook.offset = None
        n = int(batch["labels"].shape[0])
        if step >= self.active_steps:
            return
        if self.mode == "per-example":
            # The notes are released and not accounted: count every step of the window and record
            # ‖v_i‖/‖P‖ = γ by construction, never a statistic of the sampled examples (how many
            # batches were empty, which gradients vanished).
            if n > 0:
                grads = per_example_prefix_gradients(self.model, self.hook, batch)
                self.hook.offset = awp_rows(grads, weight_norm=self.radius_norm(), gamma=self.gamma)
            self.rel_norms.append(float(self.gamma))
            self.applied += 1
            return
        if n == 0 and self.mode == "paper":
            return
        norm = self.radius_norm()
        if self.mode == "paper":
            direction = raw_prefix_gradient(self.model, subset(batch, self.micro_batch_indices(n)))
        else:  # dpsat
            if self._prev_noisy is None:
                return
            direction = self._prev_noisy
        if self.hook.mask is not None:
            direction = direction * self.hook.mask
        v = awp_vector(direction, weight_norm=norm, gamma=self.gamma)
        self.perturb_(v)
        self.rel_norms.append(float(v.norm()) / max(norm, _EPS))
        self.applied += 1

    def perturb_(self, v: torch.Tensor) -> None:
        w = self.weight
        with torch.no_grad():
            self._orig = w.detach().clone()
            w.add_(v)
            self._pert = w.detach().clone()

    def after_step(self) -> None:
        if self.mode == "dpsat":
            grad = self.weight.grad
            self._prev_noisy = None if grad is None else grad.detach().clone()
        self.restore()
        self.hook.offset = None

    def restore(self) -> None:
        """P ← P₀ + (P − (P₀ + v)): removes v and keeps the optimiser's update."""
        if self._orig is None:
            return
        w = self.weight
        with torch.no_grad():
            w.copy_(self._orig + (w.detach() - self._pert))
        self._orig = self._pert = None


__all__ = ["AWP", "AWP_MODES", "awp_rows", "awp_vector", "per_example_prefix_gradients", "raw_prefix_gradient"]
