"""Cross-model flattening: weight distillation towards a non-private prefix P_np (DESIGN.md §4).

Per-example loss CE_i + λ·R(P), R(P) = ‖P − P_np‖_F (un-squared), whose gradient is
∇R = (P − P_np)/‖P − P_np‖_F (unit norm; 0 at P = P_np), so λ∇R has norm λ.

Opacus computes per-sample gradients from module hooks; R uses the weight directly, so its
gradient never reaches the per-sample gradients and the regulariser cannot be clipped there
(with Opacus it would even be overwritten: DPOptimizer sets p.grad from the clipped sum). The
trainer therefore adds it to the released gradient explicitly, after noising:

- ``paper``: as published, every example of the Poisson batch B carries λR unclipped:
  g = (Σ_{i∈B} clip(∇CE_i) + |B|·λ∇R + N(0, σ²C²)) / (qn). Adding or removing one example moves
  the noised sum by up to C + λ, not C (DESIGN.md: "the regulariser escapes clipping: true
  sensitivity C+λ"), and P_np is trained without privacy on the private split: both unaccounted.
- ``public``: P_np is trained on the public split, and the regulariser is a data-independent
  term added after noising, with the expected batch size in place of |B|:
  g = (Σ clip(∇CE_i) + N(0, σ²C²)) / (qn) + λ∇R: post-processing of the DP gradient.
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

    def released_term(self, weight: torch.Tensor, *, batch_size: int, expected_batch_size: float) -> torch.Tensor:
        """What the mode adds to the released (noised, scaled) gradient of P."""
        g = distill_gradient(weight, self.anchor, lam=self.lam)
        if self.mode == "paper":
            return g * (batch_size / expected_batch_size)
        return g

    def add_to_grad_(self, weight: torch.nn.Parameter, *, batch_size: int, expected_batch_size: float) -> None:
        term = self.released_term(weight, batch_size=batch_size, expected_batch_size=expected_batch_size)
        if weight.grad is None:
            weight.grad = term.clone()
        else:
            weight.grad.add_(term)


__all__ = ["DISTILL_MODES", "Distill", "distill_gradient", "distill_value"]
