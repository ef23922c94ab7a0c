"""Curvature of the mean loss over the selected parameters, PyHessian-style (Yao et al. 2020,
"PyHessian: Neural Networks Through the Lens of the Hessian", IEEE BigData; Algorithms 1–2).

- :func:`top_eigenvalue`: power iteration on Hessian-vector products. v₀ ~ N(0, I) normalised;
  λ_t = v_tᵀHv_t, v_{t+1} = Hv_t/‖Hv_t‖; stop when |λ_t − λ_{t−1}| / (|λ_{t−1}| + 1e-6) < tol or
  after ``max_iter`` products. Power iteration finds the eigenvalue of largest *magnitude*; at a
  minimum (H ⪰ 0) that is λ_max. ``converged`` is False when the iteration limit was hit.
- :func:`hessian_trace`: Hutchinson's estimator tr(H) = E[vᵀHv] with Rademacher v (±1 entries).
  Samples are drawn until the running mean changes by less than ``tol`` (relative) after at least
  ``min_samples`` samples, or ``max_iter`` samples. The standard error is sd(vᵀHv)/√n_samples
  (for a fixed symmetric H, Var[vᵀHv] = 2·Σ_{i≠j} H_ij², zero for a diagonal H).

Every Hessian-vector product costs about two backward passes over the data (double backward).
Random vectors come from the ``generator``; weights are restored exactly afterwards.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from dp_audit.errors import UsageError
from dp_audit.landscapes.autodiff import hessian_vector_product
from dp_audit.landscapes.directions import dot, gaussian_direction, norm, rademacher, unit
from dp_audit.landscapes.evaluation import Evaluator
from dp_audit.landscapes.params import SelectionLike, as_selection, preserved


@dataclass(frozen=True)
class TopEigenvalue:
    value: float
    iterations: int
    converged: bool
    tol: float
    history: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = list(self.history)
        return d


@dataclass(frozen=True)
class TraceEstimate:
    value: float
    se: float
    n_samples: int
    converged: bool
    tol: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(max_iter: int, tol: float) -> None:
    if max_iter < 1:
        raise UsageError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise UsageError(f"tol must be > 0, got {tol}")


def top_eigenvalue(model: torch.nn.Module, evaluator: Evaluator, params: SelectionLike, *,
                   generator: torch.Generator, max_iter: int = 100, tol: float = 1e-3,
                   indices: torch.Tensor | None = None) -> TopEigenvalue:
    """The dominant Hessian eigenvalue by power iteration (module docstring)."""
    _check(max_iter, tol)
    sel = as_selection(params)
    history: list[float] = []
    converged = False
    with preserved(model, sel):
        v = unit(gaussian_direction(sel, generator=generator))
        for _ in range(max_iter):
            hv = hessian_vector_product(model, evaluator, sel, v, indices=indices)
            lam = dot(v, hv)
            history.append(lam)
            if len(history) > 1 and abs(lam - history[-2]) / (abs(history[-2]) + 1e-6) < tol:
                converged = True
                break
            hn = norm(hv)
            if hn == 0.0:  # H v = 0: the restricted Hessian is zero on v's span; λ = 0 is exact there
                converged = True
                break
            v = [t / hn for t in hv]
    return TopEigenvalue(value=history[-1], iterations=len(history), converged=converged, tol=float(tol),
                         history=tuple(history))


def hessian_trace(model: torch.nn.Module, evaluator: Evaluator, params: SelectionLike, *,
                  generator: torch.Generator, max_iter: int = 100, tol: float = 1e-3, min_samples: int = 10,
                  indices: torch.Tensor | None = None) -> TraceEstimate:
    """tr(H) by Hutchinson's estimator with Rademacher vectors (module docstring)."""
    _check(max_iter, tol)
    min_samples = max(1, min(int(min_samples), max_iter))
    sel = as_selection(params)
    samples: list[float] = []
    converged = False
    prev = None
    with preserved(model, sel):
        for _ in range(max_iter):
            v = rademacher(sel, generator=generator)
            samples.append(dot(v, hessian_vector_product(model, evaluator, sel, v, indices=indices)))
            mean = float(np.mean(samples))
            if prev is not None and len(samples) >= min_samples and abs(mean - prev) / (abs(prev) + 1e-6) < tol:
                converged = True
                break
            prev = mean
    arr = np.asarray(samples)
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("nan")
    return TraceEstimate(value=float(arr.mean()), se=se, n_samples=int(arr.size), converged=converged,
                         tol=float(tol))


__all__ = ["TopEigenvalue", "TraceEstimate", "hessian_trace", "top_eigenvalue"]
