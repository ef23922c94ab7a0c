"""Cross-model flattening: weight distillation towards a non-private prefix P_np (DESIGN.md §4).

Per-example loss CE_i + λ·R(P), R(P) = ‖P − P_np‖_F (un-squared), whose gradient is
∇R = (P − P_np)/‖P − P_np‖_F (unit norm; 0 at P = P_np), so λ∇R has norm λ.

Opacus computes per-sample gradients from module hooks; R uses the weight directly, so its
gradient never reaches the per-sample gradients (and DPOptimizer overwrites p.grad with the
clipped, noised sum). The trainer adds it to the released gradient explicitly, in Opacus' step
hook (after clipping, noising and scaling by the expected batch size E):

- ``paper``: as the official code (private-transformers, ghost clipping): each example's loss is
  CE_i + λR, the clipping coefficients c_i = min(1, C/(‖∇CE_i‖ + 1e-6)) come from the per-sample
  norms of the hooked (CE) part, and the second backward of Σ c_i·(CE_i + λR) releases
  (Σ_i c_i(∇CE_i + λ∇R) + N(0, σ²C²)) / E, i.e. the regulariser enters with weight Σ_i c_i.
  One example's term c_i(∇CE_i + λ∇R) has norm up to C + λ (DESIGN.md: "the regulariser escapes
  clipping"), and P_np is trained without privacy on the private split: both unaccounted. An
  empty batch has no coefficients: no regulariser term.
- ``public``: P_np is trained on the public split, and the regulariser is a data-independent
  term added after noising: g = (Σ clip(∇CE_i) + N(0, σ²C²)) / E + λ∇R: post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DISTILL_MODES = ("paper", "public")


def distill_value(weight: torch.Tensor, anchor: torch.Tensor) -> float:
    return float((weight.detach() - anchor).norm())


def distill_gradient(weight: torch.Tensor, anchor: torch.Tensor, *, lam: float) -> torch.Tensor:
    """∇_P λ‖P − P_np‖_F = λ(P − P_np)/‖P − P_np‖_F (0 where P = P_np)."""
    diff = weight.detach() - anchor
    norm = diff.norm()
    return torch.zeros_like(diff) if float(norm) == 0.0 else lam * diff / norm


@dataclass
class Distill:
    anchor: torch.Tensor  # P_np (masked like P)
    lam: float
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in DISTILL_MODES:
            raise ValueError(f"distill mode must be one of {DISTILL_MODES}")

    def released_term(self, weight: torch.Tensor, *, coefficients: torch.Tensor,
                      expected_batch_size: float) -> torch.Tensor:
        """What the mode adds to the released (noised, scaled) gradient of P; ``coefficients`` are
        the per-example clipping coefficients of the step (:func:`clip_coefficients`)."""
        g = distill_gradient(weight, self.anchor, lam=self.lam)
        if self.mode == "paper":
            return g * (float(coefficients.sum()) / expected_batch_size)
        return g

    def add_to_grad_(self, weight: torch.nn.Parameter, *, coefficients: torch.Tensor,
                     expected_batch_size: float) -> None:
        term = self.released_term(weight, coefficients=coefficients, expected_batch_size=expected_batch_size)
        if weight.grad is None:
            weight.grad = term.clone()
        else:
            weight.grad.add_(term)


def clip_coefficients(optimizer) -> torch.Tensor:
    """The per-example clipping coefficients min(1, C/(‖g_i‖ + 1e-6)) of the step an Opacus
    DPOptimizer just took (Opacus' own formula, over every parameter it clips), read from the
    per-sample gradients (hooks) or per-sample norms (ghost clipping). An empty batch (no
    per-sample state, or zero rows) gives an empty tensor."""
    norms = []
    for p in optimizer.params:
        ns = getattr(p, "_norm_sample", None)
        gs = getattr(p, "grad_sample", None)
        if gs is not None:
            gs = torch.cat(gs) if isinstance(gs, list) else gs
            if len(gs) == 0:  # a batch of zero examples (dpsgd.noise_only_step)
                return torch.zeros(0)
            norms.append(gs.reshape(len(gs), -1).norm(2, dim=-1))
        elif ns is not None:
            norms.append(ns.reshape(-1))
        else:
            return torch.zeros(0)
    if not norms or norms[0].numel() == 0:
        return torch.zeros(0)
    per_sample = torch.stack(norms, dim=1).norm(2, dim=1)
    return (optimizer.max_grad_norm / (per_sample + 1e-6)).clamp(max=1.0).detach()


__all__ = ["DISTILL_MODES", "Distill", "clip_coefficients", "distill_gradient", "distill_value"]


# --------------------------------------------------------------------------- distillation on outputs

DISTILL_TARGETS = ("weights", "outputs")


def kl_each(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) KL(p_teacher ‖ p_student) of each example: over its class distribution (classifier
    logits (B, C)), or averaged over its predicted tokens' next-token distributions (causal-LM
    logits (B, L, V) with next-token ``labels`` (B, L), −100 at padding, as the LM loss)."""
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    if kl.dim() == 1:
        return kl
    kl = kl[:, :-1]  # position t predicts token t+1
    mask = (labels[:, 1:] != -100).to(kl.dtype)
    return (kl * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@dataclass
class OutputDistill:
    """Cross-model flattening on outputs (``dpflat.distill_target = "outputs"``): example i's loss
    is ℓ_i + λ·KL(p_np(·|x_i) ‖ p(·|x_i)), where p_np is the model with the teacher prefix P_np
    (its next-token distributions for a causal LM). The term is inside each example's loss, so its
    gradient goes through Opacus' per-sample clipping with ℓ_i: sensitivity C, nothing escapes
    clipping. What stays unaccounted is only P_np itself in ``paper`` mode (trained without
    privacy on the private split); ``public`` mode trains it on the public split.

    The teacher's logits come from the same forward code with the prefix weight swapped to P_np
    under ``torch.no_grad`` (Opacus captures no activations without grad), then restored."""

    weight: torch.nn.Parameter
    anchor: torch.Tensor
    lam: float

    def teacher_logits(self, model, batch) -> torch.Tensor:
        from dp_audit.trainers.modeling import model_inputs

        saved = self.weight.detach().clone()
        try:
            with torch.no_grad():
                self.weight.copy_(self.anchor)
                return model(**model_inputs(batch)).logits.detach()
        finally:
            with torch.no_grad():
                self.weight.copy_(saved)

    def loss_each(self, model, batch, base_each) -> torch.Tensor:
        """(B,) ℓ_i + λ·KL_i; ``base_each(model, batch, logits)`` gives ℓ_i from the student logits."""
        from dp_audit.trainers.modeling import model_inputs

        teacher = self.teacher_logits(model, batch)
        logits = model(**model_inputs(batch)).logits
        return base_each(logits, batch) + self.lam * kl_each(logits, teacher, batch["labels"])
