"""One DP-SGD step through Opacus, optionally with DP-Flat's AWP, as a step function.

The step is wired the way :class:`~dp_audit.trainers.dpflat.DPFlatTrainer` wires it (Opacus
``GradSampleModule`` + ``DPOptimizer``, loss reduction "mean", the real
:class:`~dp_audit.trainers.dpflat_awp.AWP` on a :class:`~dp_audit.trainers.dpflat_prefix.PrefixHook`):
``awp.before_step`` → forward/backward of the logical batch → ``optimizer.step()`` (per-example
clipping to C, Gaussian noise σC from the optimizer's generator, division by the expected batch
size, plain SGD) → ``awp.after_step`` (v removed). No Poisson sampling: the batch is the
construction's (q = 1), so one step is exactly μ-GDP with μ = 1/σ when the clipped sum has
sensitivity C. The release is the update P_after − P_before (flattened).

DP-Flat's other components (issue 17, second milestone): ``distill`` (a
:class:`~dp_audit.trainers.dpflat_distill.Distill`) and ``layer_mask=True`` are wired into the
optimizer with the trainer's own :func:`~dp_audit.trainers.dpflat.attach_components` (the
distillation term, weighted by the clipping coefficients in paper mode, and the layer mask go into
Opacus' step hook after clipping, noise and scaling). The distillation anchor P_np is
``self.distill.anchor`` (a construction sets it per side: in paper mode P_np is trained on the
side's data); the layer mask is passed to :meth:`OpacusStep.step` per call (the selection depends
on the side's data): the prefix is zeroed on the removed columns before the step, as the trainer
zeroes it before training, and the hook masks the forward pass.

Batched trials: given the state and the batch, everything but the noise is deterministic (the
paper-mode v is a function of the raw gradient; DP-SAT's v of the previous release, part of the
state; per-example v_i of x_i). :meth:`OpacusStep.batched` runs the real step once with the
optimizer's noise multiplier set to 0 (the deterministic part, AWP residuals included) and adds
n draws of Opacus' own noise (``_generate_noise``, std = noise_multiplier·max_grad_norm, the
optimizer's ``secure_mode``), scaled as ``scale_grad`` and SGD scale it. Tests check that it has
the distribution of n real steps.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dp_audit.errors import UsageError
from dp_audit.trainers.dpflat_awp import AWP
from dp_audit.trainers.dpflat_distill import Distill
from dp_audit.trainers.dpflat_prefix import PrefixHook, prefix_weight
from dp_audit.trainers.modeling import INPUT_KEYS


class OpacusStep:
    """``step(state, batch, generator)`` and ``batched(state, batch, generator, n)`` of one
    DP-SGD (``awp_mode=None``) or DP-Flat AWP (``"paper"``, ``"dpsat"``, ``"per-example"``) step.

    ``state``: ``{"prefix": P (T, D) tensor, "previous_release": noisy gradient or None}``; the
    latter is the DP-SAT direction (the previous step's released gradient, public).
    """

    def __init__(self, model: torch.nn.Module, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, lr: float = 1.0, awp_mode: str | None = None, gamma: float = 1e-4,
                 micro_batch: int | None = None, distill: Distill | None = None, layer_mask: bool = False):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.model = model
        self.awp_mode, self.gamma = awp_mode, float(gamma)
        self.micro_batch = int(micro_batch or expected_batch_size)
        self.hook = PrefixHook(model) if (awp_mode is not None or layer_mask) else None
        self.gsm = GradSampleModule(model, loss_reduction="mean")
        params = [p for p in model.parameters() if p.requires_grad]
        self.lr = float(lr)
        self.optimizer = DPOptimizer(torch.optim.SGD(params, lr=self.lr), noise_multiplier=float(noise_multiplier),
                                     max_grad_norm=float(max_grad_norm), expected_batch_size=int(expected_batch_size),
                                     loss_reduction="mean")
        self.weight = prefix_weight(self.gsm)
        self.distill = distill
        self._mask = torch.ones(self.weight.shape[-1]) if layer_mask else None
        self._stepper = None
        if distill is not None or layer_mask:
            from dp_audit.trainers.dpflat import attach_components

            # the trainer's wiring: distillation term and mask in Opacus' step hook
            _, self._stepper = attach_components(self.optimizer, self.weight, awp=None, distill=distill,
                                                 mask=self._mask)

    def _awp(self, state: dict[str, Any], generator: torch.Generator) -> AWP | None:
        if self.awp_mode is None:
            return None
        # paper mode draws its micro-batch uniformly from the batch with the step's generator, as the
        # trainer does with its training generator (issue 12 item 3)
        awp = AWP(model=self.gsm, hook=self.hook, mode=self.awp_mode, gamma=self.gamma, active_steps=1,
                  micro_batch=self.micro_batch, generator=generator)
        prev = state.get("previous_release")
        if self.awp_mode == "dpsat" and prev is not None:
            # the previous step released ``prev``: hand it to AWP the way the trainer does
            self.weight.grad = prev.detach().clone().view_as(self.weight)
            awp.after_step()
            self.weight.grad = None
        return awp

    def _set_mask(self, mask: torch.Tensor | None) -> None:
        if self._mask is None:
            if mask is not None:
                raise ValueError("this OpacusStep was built without layer_mask=True")
            return
        self._mask.copy_(torch.ones_like(self._mask) if mask is None else mask)
        self.hook.mask = self._mask
        with torch.no_grad():
            self.weight.mul_(self._mask)  # removed layers start (and stay) at zero

    def step(self, state: dict[str, Any], batch: dict[str, torch.Tensor], generator: torch.Generator, *,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        p0 = state["prefix"]
        with torch.no_grad():
            self.weight.copy_(p0)
        self._set_mask(mask)
        self.optimizer.generator = generator
        self.optimizer.zero_grad(set_to_none=True)
        awp = self._awp(state, generator)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if awp is not None:
                awp.before_step(0, batch)
            logits = self.gsm(**{k: batch[k] for k in INPUT_KEYS}).logits
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
            (self._stepper or self.optimizer).step()
            if awp is not None:
                awp.after_step()
        release = (self.weight.detach() - p0).reshape(-1).clone()
        self.optimizer.zero_grad(set_to_none=True)
        return release

    def advance(self, state: dict[str, Any], release: torch.Tensor) -> dict[str, Any]:
        """The state after a step that released ``release`` (k-step audits): P ← P + release (lr
        included in the release); DP-SAT's previous release ← this step's noisy gradient
        (−release/lr: the SGD step was P ← P − lr·g). Other modes keep no previous release."""
        p0 = state["prefix"]
        update = release.detach().to(p0.dtype).view_as(p0)
        prev = (-update / self.lr).clone() if self.awp_mode == "dpsat" else None
        return {"prefix": (p0 + update).detach(), "previous_release": prev}

    def noise_scale(self) -> float:
        """Std of the noise on one coordinate of the release: lr·σC / expected batch size."""
        o = self.optimizer
        div = o.expected_batch_size if o.loss_reduction == "mean" else 1
        return self.lr * o.noise_multiplier * o.max_grad_norm / div

    def batched(self, state: dict[str, Any], batch: dict[str, torch.Tensor], generator: torch.Generator,
                n: int, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        from opacus.optimizers.optimizer import _generate_noise

        if self.awp_mode == "paper" and self.micro_batch < int(batch["labels"].shape[0]):
            # the micro-batch is then random: one noise-free step would not stand for every trial
            raise UsageError("batched trials need a step that is random only in its noise: paper-mode AWP "
                             "with a micro-batch smaller than the batch must run unbatched (batched=False)")
        o = self.optimizer
        sigma = o.noise_multiplier
        o.noise_multiplier = 0.0
        try:
            base = self.step(state, batch, generator, mask=mask)
        finally:
            o.noise_multiplier = sigma
        noise = _generate_noise(std=sigma * o.max_grad_norm, reference=torch.zeros(n, base.numel(), dtype=base.dtype),
                                generator=generator, secure_mode=o.secure_mode)
        div = o.expected_batch_size if o.loss_reduction == "mean" else 1
        if self._mask is not None:  # the step hook masks the noised gradient: no noise on removed layers
            noise = noise * self._mask.expand_as(self.weight).reshape(1, -1).to(noise.dtype)
        return base.unsqueeze(0) - (self.lr / div) * noise


__all__ = ["OpacusStep"]
