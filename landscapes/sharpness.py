"""Sharpness probes: the ρ-ball worst case, DP-Flat's gradient-direction probe, and per-layer
sharpness of a prefix (DESIGN.md §4, §8).

**ρ-ball sharpness.** S_ρ = max_{‖δ‖≤ρ} L(w+δ) − L(w), approximated by a few projected ascent
steps with SAM-style normalised gradients (Foret et al. 2021; Wu et al. 2020's AWP is one such
step): δ ← Π_ρ(δ + s·ρ·∇L(w+δ)/‖∇L(w+δ)‖), Π_ρ the projection on the ball, s = ``step_size``.
The reported value is the largest loss increase seen at any iterate: a *lower* bound on S_ρ.
Because ∇L = 0 at an exact minimum, the ascent starts from a random point of the sphere ‖δ‖ = ρ
(``random_start``, drawn from ``generator``). For a quadratic ½wᵀAw at w = 0 the iteration is a
shifted power iteration and S_ρ → ½ρ²λ_max(A).

**DP-Flat probe.** The loss along the normalised gradient of the probe split,
``L(w + α·r·g/‖g‖)`` for α ∈ linspace(0, 1, 11) (DP-Flat, arXiv 2403.04124: the sharpness that
guides its cross-layer selection; DESIGN.md §4), with sharpness = max_α L − L(α=0). The radius
r is our choice, stated explicitly because the source leaves it implicit:
``scale="unit"`` (default) uses r = ``radius`` (1 by default), i.e. δ(α) = α·g/‖g‖, the form in
DESIGN.md §4 and in the trainer's copy (dp_audit.trainers.dpflat_sparse); ``scale="weight"``
uses r = ``radius``·‖P‖_F (the norm of the probed weights), the scaling of DP-Flat's AWP step
v = γ·‖P‖_F·g/‖g‖: with radius = γ the point α = 1 is exactly the AWP perturbation, and the
probe is invariant to the scale of the weights.

**Per-layer prefix sharpness.** For each group (a layer's key/value prefix, see prefix.py):
``mode="restrict"``: the DP-Flat probe with the gradient restricted to that group (the sharpness
of the loss in that layer's prefix alone); ``mode="remove"``: DP-Flat's removal test: the group
is zeroed (``zero_group``; the attention mask still covers the virtual tokens) and the probe runs
along the gradient of the remaining groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from dp_audit.errors import UsageError
from dp_audit.landscapes.autodiff import selection_grad
from dp_audit.landscapes.directions import gaussian_direction, norm, unit
from dp_audit.landscapes.evaluation import Evaluator
from dp_audit.landscapes.params import ParamGroup, SelectionLike, as_selection, preserved, set_offset, zero_group

DEFAULT_ALPHAS = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 11), 10))
SCALES = ("unit", "weight")
MODES = ("restrict", "remove")


def _plain(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class RhoSharpness:
    rho: float
    loss0: float
    loss_max: float
    sharpness: float
    steps: int
    losses: tuple[float, ...]  # loss at each iterate (random start first when used)
    delta_norm: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass(frozen=True)
class DPFlatCurve:
    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    accs: tuple[float, ...] | None
    sharpness: float
    scale: str
    radius: float  # ‖δ(α=1)‖
    grad_norm: float
    weight_norm: float
    group: str | None = None
    removed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass(frozen=True)
class LayerSharpness:
    mode: str
    groups: tuple[str, ...]
    sharpness: tuple[float, ...]
    curves: tuple[DPFlatCurve, ...]

    @property
    def flattest(self) -> str:
        """The group with the smallest sharpness (DP-Flat's greedy choice in ``remove`` mode)."""
        return self.groups[int(np.argmin(self.sharpness))]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "groups": list(self.groups), "sharpness": list(self.sharpness),
                "flattest": self.flattest, "curves": [c.to_dict() for c in self.curves]}


def _project(delta: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    n = norm(delta)
    return delta if n <= rho else [t * (rho / n) for t in delta]


def rho_sharpness(model: torch.nn.Module, evaluator: Evaluator, params: SelectionLike, *, rho: float,
                  steps: int = 5, step_size: float = 1.0, random_start: bool = True,
                  generator: torch.Generator | None = None, indices: torch.Tensor | None = None) -> RhoSharpness:
    """Worst-case loss increase within ‖δ‖ ≤ ``rho`` by ``steps`` projected normalised ascent steps
    (module docstring). Costs ``steps`` gradient passes plus two evaluations."""
    if not rho > 0:
        raise UsageError(f"rho must be > 0, got {rho}")
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    if random_start and generator is None:
        raise UsageError("rho_sharpness with random_start needs a torch.Generator")
    sel = as_selection(params)
    with preserved(model, sel) as base:
        loss0 = evaluator(model, indices=indices).mean_loss()
        if random_start:
            delta = [t * rho for t in unit(gaussian_direction(sel, generator=generator))]
        else:
            delta = [torch.zeros_like(b) for b in base]
        losses = []
        for _ in range(steps):
            set_offset(sel, base, delta)
            loss, g = selection_grad(model, evaluator, sel, indices=indices)
            if random_start or losses:
                losses.append(loss)
            gn = norm(g)
            if gn == 0.0:
                break
            delta = _project([d + (step_size * rho / gn) * gi for d, gi in zip(delta, g)], rho)
        set_offset(sel, base, delta)
        losses.append(evaluator(model, indices=indices).mean_loss())
        loss_max = max(losses)
    return RhoSharpness(rho=float(rho), loss0=loss0, loss_max=loss_max, sharpness=loss_max - loss0,
                        steps=int(steps), losses=tuple(losses), delta_norm=norm(delta))


def dpflat_probe(model: torch.nn.Module, evaluator: Evaluator, params: SelectionLike, *,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, scale: str = "unit", radius: float = 1.0,
                 indices: torch.Tensor | None = None, group: str | None = None,
                 removed: str | None = None) -> DPFlatCurve:
    """DP-Flat's probe: the loss at w + α·r·g/‖g‖ over ``alphas`` (module docstring for r)."""
    if scale not in SCALES:
        raise UsageError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    alphas = tuple(float(a) for a in alphas)
    if not alphas:
        raise UsageError("alphas must not be empty")
    sel = as_selection(params)
    with preserved(model, sel) as base:
        _, g = selection_grad(model, evaluator, sel, indices=indices)
        gn = norm(g)
        wn = norm([e.masked(b) for e, b in zip(sel, base)])
        r = float(radius) * (wn if scale == "weight" else 1.0)
        d = [t * (r / (gn + 1e-20)) for t in g]
        losses, accs = [], []
        for a in alphas:
            set_offset(sel, base, d, a)
            res = evaluator(model, indices=indices)
            losses.append(res.mean_loss())
            accs.append(res.accuracy())
    base_loss = losses[alphas.index(0.0)] if 0.0 in alphas else losses[0]
    return DPFlatCurve(alphas=alphas, losses=tuple(losses),
                       accs=None if any(a is None for a in accs) else tuple(accs),
                       sharpness=max(losses) - base_loss, scale=scale, radius=r if gn > 0 else 0.0,
                       grad_norm=gn, weight_norm=wn, group=group, removed=removed)


def per_layer_sharpness(model: torch.nn.Module, evaluator: Evaluator, groups: Sequence[ParamGroup], *,
                        alphas: Sequence[float] = DEFAULT_ALPHAS, mode: str = "restrict", scale: str = "unit",
                        radius: float = 1.0, indices: torch.Tensor | None = None) -> LayerSharpness:
    """The DP-Flat probe for each group (``restrict``) or with each group removed (``remove``)."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    groups = list(groups)
    if not groups:
        raise UsageError("per_layer_sharpness needs at least one group")
    curves = []
    for i, grp in enumerate(groups):
        if mode == "restrict":
            curves.append(dpflat_probe(model, evaluator, grp, alphas=alphas, scale=scale, radius=radius,
                                       indices=indices, group=grp.name))
        else:
            rest = [h for j, h in enumerate(groups) if j != i]
            if not rest:
                raise UsageError("mode='remove' needs at least two groups")
            with zero_group(grp):
                curves.append(dpflat_probe(model, evaluator, rest, alphas=alphas, scale=scale, radius=radius,
                                           indices=indices, removed=grp.name))
    return LayerSharpness(mode=mode, groups=tuple(g.name for g in groups),
                          sharpness=tuple(c.sharpness for c in curves), curves=tuple(curves))


__all__ = ["DEFAULT_ALPHAS", "DPFlatCurve", "LayerSharpness", "MODES", "RhoSharpness", "SCALES", "dpflat_probe",
           "per_layer_sharpness", "rho_sharpness"]
