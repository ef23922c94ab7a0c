"""Loss (and accuracy) at w + η·d: 1-D curves averaged over K random directions, and 2-D surfaces.

**Estimator.** For a split with per-example losses ℓ_i, the curve is
``L(η) = E_d[(1/n)·Σ_i ℓ_i(w + η·d)]``. The probe evaluates w once on every example (ℓ_i(w),
kept per example), then for each direction d_k (k = 1..K) draws a subsample S_k of m examples
uniformly without replacement (independently per direction; the same S_k for every η of that
direction, so each direction's curve is smooth) and estimates

    Δ_k(η) = (1/m)·Σ_{i∈S_k} [ℓ_i(w + η·d_k) − ℓ_i(w)],      L̂(η) = L(w) + (1/K)·Σ_k Δ_k(η).

The per-example difference is a control variate: it removes the example-to-example spread of ℓ_i
that dominates a raw subsample mean, and costs nothing (ℓ_i(w) is computed once anyway). The Δ_k
are i.i.d. and unbiased for L(η) − L(w) (the direction and the subsample are both fresh for each
k), so ``loss_se = sd_k(Δ_k)/√K`` is a standard error that *includes* the subsampling noise; with
m = n (full evaluation) it is the direction-to-direction error alone. Accuracy uses the same
construction on the 0/1 correctness.

**Budget.** Naively, K = 8 directions × 11 η values cost 88 evaluation epochs. With
``budget=B`` (epochs of evaluation per split, default 2.5) the probe spends one epoch on w and
the remaining (B − 1)·n example evaluations on the K·J points (J = number of η ≠ 0), counting
each point as m + c examples: m = ⌊(B − 1)·n / (K·J) − c⌋ (at least 1), where
c = ``call_overhead`` (default 8) is the fixed cost of one forward call in example-equivalents.
The K·J points need K·J separate forward calls (each has different weights), and for a small
model that per-call cost dominates: on the 2-layer demo BERT one call costs about as much as 8
examples (benchmarks/landscape_cost.py). For a large split the correction is negligible
(n = 10 000: m = 179 instead of 187); for n = 512 it gives m = 1, i.e. every point is one fresh
random example per direction, and the error bars say so. ``budget=None`` evaluates every
example at every point (K·J + 1 epochs), which is what a publication figure should use; the
default keeps `dp-audit run` within about 3 epochs and still reports honest error bars. The
point η = 0 is exact and shared by all directions and splits.

Directions are drawn from ``generator`` once and shared by every split (members, non-members,
dev), so their curves differ only by the data; only one direction is held in memory at a time
(each is regenerated from its own seed, drawn from ``generator``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dp_audit.errors import UsageError
from dp_audit.landscapes.directions import KINDS, random_direction
from dp_audit.landscapes.evaluation import Evaluator, PerExample
from dp_audit.landscapes.params import SelectionLike, as_selection, preserved, set_offset

DEFAULT_ETAS = tuple(float(x) for x in np.round(np.linspace(-1.0, 1.0, 11), 10))


def _tuple(a: Any) -> tuple:
    return tuple(float(x) for x in np.asarray(a, dtype=float).ravel())


@dataclass(frozen=True)
class Curve:
    """One split's loss curve. ``losses[k][j]`` is direction k's estimate of the mean loss at eta[j]."""

    probe: str
    split: str
    eta: tuple[float, ...]
    loss_mean: tuple[float, ...]
    loss_se: tuple[float, ...]
    acc_mean: tuple[float, ...] | None
    acc_se: tuple[float, ...] | None
    losses: tuple[tuple[float, ...], ...]
    accs: tuple[tuple[float, ...], ...] | None
    n_directions: int
    n_examples: int
    examples_per_point: int
    budget: float | None
    seeds: tuple[int, ...]

    @property
    def loss_increase(self) -> tuple[float, ...]:
        """L̂(η) − L(w): the quantity ½η²·tr(H) approximates for Gaussian directions."""
        base = self.loss_mean[self.eta.index(0.0)] if 0.0 in self.eta else float("nan")
        return tuple(v - base for v in self.loss_mean)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Curve":
        kw = {}
        for k in cls.__dataclass_fields__:
            v = data.get(k)
            if isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            kw[k] = v
        return cls(**kw)


@dataclass(frozen=True)
class Surface:
    """A 2-D surface: ``loss[i][j]`` at w + eta_x[i]·d1 + eta_y[j]·d2."""

    probe: str
    split: str
    eta_x: tuple[float, ...]
    eta_y: tuple[float, ...]
    loss: tuple[tuple[float, ...], ...]
    acc: tuple[tuple[float, ...], ...] | None
    n_examples: int
    seeds: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d


def examples_per_point(n: int, *, n_directions: int, n_points: int, budget: float | None,
                       call_overhead: float = 8.0) -> int:
    """m = ⌊(budget − 1)·n / (K·J) − call_overhead⌋, clamped to [1, n]; n when ``budget`` is None
    or J = 0 (module docstring)."""
    if budget is None or n_points == 0:
        return n
    if not budget >= 1.0:
        raise UsageError(f"budget must be >= 1 epoch (one full pass on w is always made), got {budget}")
    if not call_overhead >= 0:
        raise UsageError(f"call_overhead must be >= 0, got {call_overhead}")
    m = int(math.floor((budget - 1.0) * n / (n_directions * n_points) - call_overhead + 1e-9))
    return max(1, min(n, m))


def _seeds(generator: torch.Generator, k: int) -> list[int]:
    return [int(s) for s in torch.randint(0, 2**62, (k,), generator=generator)]


def _check_etas(etas: Sequence[float]) -> tuple[float, ...]:
    out = _tuple(etas)
    if not out or not all(math.isfinite(x) for x in out):
        raise UsageError("etas must be a non-empty list of finite numbers")
    return out


def _se(x: np.ndarray) -> np.ndarray:
    k = x.shape[0]
    if k < 2:
        return np.full(x.shape[1:], float("nan"))
    return x.std(axis=0, ddof=1) / math.sqrt(k)


def loss_curves(model: torch.nn.Module, evaluators: Mapping[str, Evaluator], params: SelectionLike, *,
                etas: Sequence[float] = DEFAULT_ETAS, n_directions: int = 8, kind: str = "gaussian",
                generator: torch.Generator, budget: float | None = 2.5, call_overhead: float = 8.0,
                ignore_1d: str = "zero", unit_norm: bool = False, progress: bool = True) -> dict[str, Curve]:
    """Curves of every split in ``evaluators`` along the same K directions (module docstring).

    ``kind``: "gaussian" or "filter" (directions.py); ``unit_norm`` rescales each direction to
    ‖d‖ = 1; ``budget``: evaluation epochs per split (None = full evaluation), ``call_overhead``:
    the cost of one forward call in example-equivalents (module docstring). The weights are
    restored bit-exactly afterwards, also on errors."""
    if kind not in KINDS:
        raise UsageError(f"direction kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if n_directions < 1:
        raise UsageError(f"n_directions must be >= 1, got {n_directions}")
    if not evaluators:
        raise UsageError("loss_curves needs at least one evaluator")
    etas = _check_etas(etas)
    sel = as_selection(params)
    nonzero = [j for j, e in enumerate(etas) if e != 0.0]
    seeds = _seeds(generator, n_directions)
    with preserved(model, sel) as base:
        bases: dict[str, PerExample] = {s: ev(model) for s, ev in evaluators.items()}
        plan = {s: examples_per_point(b.n, n_directions=n_directions, n_points=len(nonzero), budget=budget,
                                      call_overhead=call_overhead)
                for s, b in bases.items()}
        subsets = {s: [None if plan[s] >= bases[s].n else
                       torch.sort(torch.randperm(bases[s].n, generator=generator)[:plan[s]]).values
                       for _ in range(n_directions)] for s in evaluators}
        has_acc = {s: b.correct is not None for s, b in bases.items()}
        d_loss = {s: np.zeros((n_directions, len(etas))) for s in evaluators}
        d_acc = {s: np.zeros((n_directions, len(etas))) for s in evaluators}
        total = n_directions * len(nonzero) * len(evaluators)
        with tqdm(total=total, desc=f"landscape {kind}", disable=not progress, leave=False) as bar:
            for k, seed in enumerate(seeds):
                d = random_direction(sel, kind=kind, generator=torch.Generator().manual_seed(seed),
                                     ignore_1d=ignore_1d, unit_norm=unit_norm)
                for j in nonzero:
                    set_offset(sel, base, d, etas[j])
                    for s, ev in evaluators.items():
                        idx = subsets[s][k]
                        r = ev(model, indices=idx)
                        b = bases[s]
                        l0 = b.losses if idx is None else b.losses[idx]
                        d_loss[s][k, j] = float((r.losses.double() - l0.double()).mean())
                        if has_acc[s]:
                            c0 = b.correct if idx is None else b.correct[idx]
                            d_acc[s][k, j] = float((r.correct.double() - c0.double()).mean())
                        bar.update(1)
    out = {}
    for s, b in bases.items():
        L0 = b.mean_loss()
        per_dir = L0 + d_loss[s]
        acc = None
        if has_acc[s]:
            A0 = b.accuracy()
            acc = A0 + d_acc[s]
        out[s] = Curve(
            probe=kind, split=s, eta=etas, loss_mean=_tuple(L0 + d_loss[s].mean(axis=0)),
            loss_se=_tuple(_se(d_loss[s])),
            acc_mean=None if acc is None else _tuple(acc.mean(axis=0)),
            acc_se=None if acc is None else _tuple(_se(d_acc[s])),
            losses=tuple(_tuple(row) for row in per_dir),
            accs=None if acc is None else tuple(_tuple(row) for row in acc),
            n_directions=n_directions, n_examples=b.n, examples_per_point=plan[s], budget=budget,
            seeds=tuple(seeds))
    return out


def loss_curve(model: torch.nn.Module, evaluator: Evaluator, params: SelectionLike, *,
               etas: Sequence[float] = DEFAULT_ETAS, n_directions: int = 8, kind: str = "gaussian",
               generator: torch.Generator, split: str = "dev", budget: float | None = 2.5,
               call_overhead: float = 8.0, ignore_1d: str = "zero", unit_norm: bool = False,
               progress: bool = True) -> Curve:
    """One split's curve (:func:`loss_curves` with a single evaluator)."""
    return loss_curves(model, {split: evaluator}, params, etas=etas, n_directions=n_directions, kind=kind,
                       generator=generator, budget=budget, call_overhead=call_overhead, ignore_1d=ignore_1d,
                       unit_norm=unit_norm, progress=progress)[split]


def loss_surface_2d(model: torch.nn.Module, evaluator: Evaluator, params: SelectionLike, *,
                    etas_x: Sequence[float] = DEFAULT_ETAS, etas_y: Sequence[float] | None = None,
                    kind: str = "gaussian", generator: torch.Generator, split: str = "dev",
                    max_examples: int | None = None, ignore_1d: str = "zero", unit_norm: bool = False,
                    progress: bool = True) -> Surface:
    """Loss on the grid w + a·d1 + b·d2 (Li et al. 2018's 2-D plots; two independent directions).

    ``max_examples`` evaluates a fixed random subsample (drawn from ``generator``) at every grid
    point: the surface is then that subsample's loss (no error bars: one pair of directions)."""
    etas_x = _check_etas(etas_x)
    etas_y = etas_x if etas_y is None else _check_etas(etas_y)
    sel = as_selection(params)
    seeds = _seeds(generator, 2)
    with preserved(model, sel) as base:
        d1, d2 = (random_direction(sel, kind=kind, generator=torch.Generator().manual_seed(s), ignore_1d=ignore_1d,
                                   unit_norm=unit_norm) for s in seeds)
        idx = None
        n = evaluator(model).n if max_examples is not None else None
        if max_examples is not None and max_examples < n:
            idx = torch.sort(torch.randperm(n, generator=generator)[:max_examples]).values
        loss = np.zeros((len(etas_x), len(etas_y)))
        acc = np.zeros_like(loss)
        has_acc = True
        with tqdm(total=loss.size, desc="landscape 2-D", disable=not progress, leave=False) as bar:
            for i, a in enumerate(etas_x):
                for j, b in enumerate(etas_y):
                    offset = [a * x + b * y for x, y in zip(d1, d2)]
                    set_offset(sel, base, offset)
                    r = evaluator(model, indices=idx)
                    loss[i, j] = r.mean_loss()
                    has_acc = has_acc and r.correct is not None
                    acc[i, j] = r.accuracy() if r.correct is not None else float("nan")
                    bar.update(1)
        n_used = r.n
    return Surface(probe=kind, split=split, eta_x=etas_x, eta_y=etas_y, loss=tuple(_tuple(row) for row in loss),
                   acc=tuple(_tuple(row) for row in acc) if has_acc else None, n_examples=n_used,
                   seeds=(seeds[0], seeds[1]))


__all__ = ["Curve", "DEFAULT_ETAS", "Surface", "examples_per_point", "loss_curve", "loss_curves",
           "loss_surface_2d"]
