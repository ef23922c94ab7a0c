"""Gradients and Hessian-vector products of an evaluator's mean loss over a parameter selection.

Both accumulate over the evaluator's mini-batches (``loss_terms``), so no graph of the whole
data set is ever held. Masked entries (parameter groups) are zero in every returned tensor: the
probes work in the subspace of the selected coordinates, whose Hessian is M·H·M.
Hessian-vector products use double backward, Hv = ∇(∇L·v) (Pearlmutter 1994), as PyHessian does.
Fused attention kernels (PyTorch's flash/efficient SDPA) have no double backward, so HVPs run
with the plain "math" attention backend (same values, more memory).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from dp_audit.landscapes.evaluation import Evaluator, mean_loss_and_grad
from dp_audit.landscapes.params import Selection, requiring_grad


def selection_grad(model: torch.nn.Module, evaluator: Evaluator, selection: Selection, *,
                   indices: torch.Tensor | None = None) -> tuple[float, list[torch.Tensor]]:
    """The mean loss at the current weights and its (masked) gradient over ``selection``."""
    with requiring_grad(selection):
        total, grads = mean_loss_and_grad(model, evaluator, [e.param for e in selection], indices=indices)
    return total, [e.masked(g) for e, g in zip(selection, grads)]


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Select the math SDPA backend (the only one with a double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def hessian_vector_product(model: torch.nn.Module, evaluator: Evaluator, selection: Selection,
                           vector: Sequence[torch.Tensor], *,
                           indices: torch.Tensor | None = None) -> list[torch.Tensor]:
    """H·v for the Hessian of the mean loss restricted to ``selection`` (``vector`` already masked)."""
    params = [e.param for e in selection]
    out = [torch.zeros_like(p) for p in params]
    with requiring_grad(selection), twice_differentiable():
        for term in evaluator.loss_terms(model, indices=indices):
            gs = torch.autograd.grad(term, params, create_graph=True, allow_unused=True)
            dot = None
            for e, g, v in zip(selection, gs, vector):
                if g is not None:
                    t = (e.masked(g) * v.to(g.dtype)).sum()
                    dot = t if dot is None else dot + t
            if dot is None or not dot.requires_grad:
                continue
            hv = torch.autograd.grad(dot, params, allow_unused=True)
            for acc, h in zip(out, hv):
                if h is not None:
                    acc.add_(h.detach())
    return [e.masked(h) for e, h in zip(selection, out)]


__all__ = ["hessian_vector_product", "selection_grad", "twice_differentiable"]
