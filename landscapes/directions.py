"""Random directions in the space of the selected parameters (seeded with a ``torch.Generator``).

- ``gaussian``: d ~ N(0, I) over the selected coordinates (masked coordinates are 0). With this
  d, E‖d‖² = number of coordinates, and for a loss with Hessian H at a minimum,
  E[L(w+ηd)] − L(w) ≈ ½η²·tr(H) (exact for a quadratic): the quantity DP-Flat's Figure 1 plots.
- ``filter``: filter normalisation of Li et al. 2018 ("Visualizing the Loss Landscape of Neural
  Nets", NeurIPS, §4): a Gaussian d whose every filter is rescaled to the norm of the matching
  filter of the weights, d_f ← d_f·‖w_f‖/‖d_f‖. A *filter* is a slice along dim 0: a row of a
  ``Linear`` weight (one output unit), an output channel of a convolution, one virtual token of a
  prefix embedding. Parameters with ≤ 1 dimension (biases, LayerNorm) follow ``ignore_1d``:
  ``"zero"`` (default; Li et al.'s ``ignore='biasbn'``: not perturbed), ``"weights"`` (d = w, Li
  et al.'s other choice), ``"keep"`` (the raw Gaussian), ``"filter"`` (treated as one filter).
  A filter whose weights are all zero gets a zero direction (w = 0 gives no scale).
- ``unit``: any direction divided by its global norm (‖d‖ = 1 over the whole selection).

Directions are drawn on the CPU from the generator (so a seed gives the same direction on any
device) in float32, then moved to each parameter's device and dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dp_audit.errors import UsageError
from dp_audit.landscapes.params import Selection

Direction = list[torch.Tensor]
KINDS = ("gaussian", "filter")
IGNORE_1D = ("zero", "weights", "keep", "filter")
_EPS = 1e-10


def gaussian_direction(selection: Selection, *, generator: torch.Generator) -> Direction:
    """d ~ N(0, I) on the selected coordinates (zeros outside the masks)."""
    out = []
    for e in selection:
        d = torch.randn(e.param.shape, generator=generator, dtype=torch.float32)
        out.append(e.masked(d.to(device=e.param.device, dtype=e.param.dtype)))
    return out


def filter_normalize(direction: Direction, selection: Selection, *, ignore_1d: str = "zero") -> Direction:
    """Li et al. 2018 filter normalisation of ``direction`` against the current weights (see the
    module docstring); masked-out coordinates stay zero."""
    if ignore_1d not in IGNORE_1D:
        raise UsageError(f"ignore_1d must be one of {', '.join(IGNORE_1D)}, got {ignore_1d!r}")
    out = []
    for d, e in zip(direction, selection):
        w = e.masked(e.param.detach())
        if d.dim() <= 1:
            if ignore_1d == "zero":
                nd = torch.zeros_like(d)
            elif ignore_1d == "weights":
                nd = w.clone()
            elif ignore_1d == "keep":
                nd = d.clone()
            else:
                nd = d * (w.norm() / (d.norm() + _EPS))
        else:
            dims = tuple(range(1, d.dim()))
            wn = w.norm(dim=dims, keepdim=True)
            dn = d.norm(dim=dims, keepdim=True)
            nd = d * (wn / (dn + _EPS))
        out.append(e.masked(nd))
    return out


def norm(direction: Direction) -> float:
    """Global Euclidean norm over all tensors."""
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in direction)))


def dot(a: Direction, b: Direction) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def unit(direction: Direction) -> Direction:
    """``direction`` / its global norm (a zero direction stays zero)."""
    n = norm(direction)
    return [t / (n + 1e-20) for t in direction]


def scale(direction: Direction, factor: float) -> Direction:
    return [t * float(factor) for t in direction]


def random_direction(selection: Selection, *, kind: str = "gaussian", generator: torch.Generator,
                     ignore_1d: str = "zero", unit_norm: bool = False) -> Direction:
    """One direction of ``kind`` ("gaussian" or "filter"), optionally scaled to unit norm."""
    if kind not in KINDS:
        raise UsageError(f"direction kind must be one of {', '.join(KINDS)}, got {kind!r}")
    d = gaussian_direction(selection, generator=generator)
    if kind == "filter":
        d = filter_normalize(d, selection, ignore_1d=ignore_1d)
    return unit(d) if unit_norm else d


def random_directions(selection: Selection, n: int, *, kind: str = "gaussian", generator: torch.Generator,
                      ignore_1d: str = "zero", unit_norm: bool = False) -> list[Direction]:
    """``n`` independent directions, drawn in order from ``generator``."""
    if n < 1:
        raise UsageError(f"n_directions must be >= 1, got {n}")
    return [random_direction(selection, kind=kind, generator=generator, ignore_1d=ignore_1d, unit_norm=unit_norm)
            for _ in range(n)]


def rademacher(selection: Selection, *, generator: torch.Generator) -> Direction:
    """v with independent ±1 entries on the selected coordinates (Hutchinson's probe vectors)."""
    out = []
    for e in selection:
        v = torch.randint(0, 2, e.param.shape, generator=generator).to(torch.float32) * 2 - 1
        out.append(e.masked(v.to(device=e.param.device, dtype=e.param.dtype)))
    return out


def check_same_shapes(direction: Sequence[torch.Tensor], selection: Selection) -> None:
    if len(direction) != len(selection) or any(d.shape != e.param.shape for d, e in zip(direction, selection)):
        raise UsageError("direction does not match the selected parameters")


__all__ = ["Direction", "IGNORE_1D", "KINDS", "check_same_shapes", "dot", "filter_normalize", "gaussian_direction",
           "norm", "rademacher", "random_direction", "random_directions", "scale", "unit"]
