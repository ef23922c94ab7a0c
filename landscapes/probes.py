"""Named landscape probes with frozen configs, and :func:`run_probes`, which runs a list of them
and returns the ``"landscapes"`` object of audit.json (docs/formats.md, docs/landscapes.md)::

    {"curves": [Curve.to_dict() + {"label": ..., "seed": ...}, ...],
     "sharpness": {label: {split: {...}}},
     "curvature": {"lambda_max": x, "trace": y, "trace_se": s, label: {split: {...}}},
     "per_layer": {label: {split: {...}}}}

``lambda_max`` / ``trace`` are copies of the first "hessian-top" / "hessian-trace" result (the
shape docs/formats.md shows); the full results sit under their labels.

Each probe draws its own seed from the caller's generator (recorded as ``seed``), so a result can
be reproduced alone with ``torch.Generator().manual_seed(seed)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from dp_audit.errors import UsageError
from dp_audit.landscapes.evaluation import Evaluator
from dp_audit.landscapes.hessian import hessian_trace, top_eigenvalue
from dp_audit.landscapes.params import select_parameters
from dp_audit.landscapes.prefix import prefix_layer_groups
from dp_audit.landscapes.sharpness import DEFAULT_ALPHAS, dpflat_probe, per_layer_sharpness, rho_sharpness
from dp_audit.landscapes.surface import DEFAULT_ETAS, loss_curves
from dp_audit.registry import Registry

SECTIONS = ("curves", "sharpness", "curvature", "per_layer")


# ---------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class CurveConfig:
    """Options of "curve-gaussian" / "curve-filter" (the direction kind is the probe's name)."""

    etas: tuple[float, ...] = DEFAULT_ETAS
    n_directions: int = 8
    budget: float | None = 2.5  # evaluation epochs per split; None or 0: every example at every point
    call_overhead: float = 8.0
    ignore_1d: str = "zero"
    unit_norm: bool = False


@dataclass(frozen=True)
class RhoConfig:
    rho: float = 0.05
    steps: int = 5
    step_size: float = 1.0
    random_start: bool = True
    max_examples: int | None = None


@dataclass(frozen=True)
class DPFlatConfig:
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    scale: str = "unit"
    radius: float = 1.0
    max_examples: int | None = None


@dataclass(frozen=True)
class HessianTopConfig:
    max_iter: int = 100
    tol: float = 1e-3
    max_examples: int | None = None


@dataclass(frozen=True)
class HessianTraceConfig:
    max_iter: int = 100
    tol: float = 1e-3
    min_samples: int = 10
    max_examples: int | None = None


@dataclass(frozen=True)
class PrefixLayerConfig:
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    mode: str = "restrict"
    scale: str = "unit"
    radius: float = 1.0
    part: str = "both"
    max_examples: int | None = None


@dataclass(frozen=True)
class ParamSpec:
    """Which parameters a probe moves (:func:`~dp_audit.landscapes.params.select_parameters`)."""

    trainable_only: bool = True
    include: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ProbeSpec:
    """One probe to run: registry ``name``, config ``options``, ``splits`` (evaluator names; None =
    the probe's default), an optional ``label`` (default: the name; must be unique per section)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    splits: tuple[str, ...] | None = None
    label: str | None = None
    params: ParamSpec = ParamSpec()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProbeSpec":
        """From a config table: ``{"name": ..., "splits": [...], "label": ..., "params": {...}, **options}``."""
        data = dict(data)
        if "name" not in data:
            raise UsageError("probe entry without 'name'")
        name = str(data.pop("name"))
        splits = data.pop("splits", None)
        label = data.pop("label", None)
        pdata = dict(data.pop("params", {}) or {})
        unknown = set(pdata) - {f.name for f in dataclasses.fields(ParamSpec)}
        if unknown:
            raise UsageError(f"probe {name!r}: unknown params key(s) {sorted(unknown)}")
        params = ParamSpec(trainable_only=bool(pdata.get("trainable_only", True)),
                           include=None if pdata.get("include") is None else tuple(pdata["include"]),
                           layers=None if pdata.get("layers") is None else tuple(int(x) for x in pdata["layers"]))
        return cls(name=name, options=data, splits=None if splits is None else tuple(splits), label=label,
                   params=params)


def make_config(cls: type, options: Mapping[str, Any], *, probe: str) -> Any:
    """``cls(**options)`` with a one-line UsageError for unknown keys; lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - names
    if unknown:
        raise UsageError(f"probe {probe!r}: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


# ---------------------------------------------------------------------------------------------
# probes


@dataclass(frozen=True)
class Probe:
    """A registry entry: the section it writes, its config class, its default splits and its runner
    ``run(model, evaluator(s), params, config, generator, indices, progress) -> dict``."""

    name: str
    section: str
    config_cls: type
    prefer_splits: tuple[str, ...]
    run: Callable[..., Any] = field(repr=False)
    all_splits: bool = False  # curves: every split along the same directions


PROBES: Registry[Probe] = Registry("probe")


def _register(probe: Probe) -> Probe:
    return PROBES.register(probe.name)(probe)


def _curve(kind: str) -> Callable[..., Any]:
    def run(model, evaluators, params, cfg: CurveConfig, generator, indices, progress):
        return loss_curves(model, evaluators, params, etas=cfg.etas, n_directions=cfg.n_directions, kind=kind,
                           generator=generator, budget=cfg.budget or None, call_overhead=cfg.call_overhead,
                           ignore_1d=cfg.ignore_1d, unit_norm=cfg.unit_norm, progress=progress)
    return run


_register(Probe("curve-gaussian", "curves", CurveConfig, ("train", "nonmember", "dev"), _curve("gaussian"),
                all_splits=True))
_register(Probe("curve-filter", "curves", CurveConfig, ("train", "nonmember", "dev"), _curve("filter"),
                all_splits=True))
_register(Probe(
    "sharpness-rho", "sharpness", RhoConfig, ("train", "dev"),
    lambda model, ev, params, cfg, generator, indices, progress: rho_sharpness(
        model, ev, params, rho=cfg.rho, steps=cfg.steps, step_size=cfg.step_size, random_start=cfg.random_start,
        generator=generator, indices=indices).to_dict()))
_register(Probe(
    "dpflat-probe", "sharpness", DPFlatConfig, ("dev", "train"),
    lambda model, ev, params, cfg, generator, indices, progress: dpflat_probe(
        model, ev, params, alphas=cfg.alphas, scale=cfg.scale, radius=cfg.radius, indices=indices).to_dict()))
_register(Probe(
    "hessian-top", "curvature", HessianTopConfig, ("train", "dev"),
    lambda model, ev, params, cfg, generator, indices, progress: top_eigenvalue(
        model, ev, params, generator=generator, max_iter=cfg.max_iter, tol=cfg.tol, indices=indices).to_dict()))
_register(Probe(
    "hessian-trace", "curvature", HessianTraceConfig, ("train", "dev"),
    lambda model, ev, params, cfg, generator, indices, progress: hessian_trace(
        model, ev, params, generator=generator, max_iter=cfg.max_iter, tol=cfg.tol, min_samples=cfg.min_samples,
        indices=indices).to_dict()))
_register(Probe(
    "prefix-layer-sharpness", "per_layer", PrefixLayerConfig, ("dev", "train"),
    lambda model, ev, params, cfg, generator, indices, progress: per_layer_sharpness(
        model, ev, prefix_layer_groups(model, part=cfg.part), alphas=cfg.alphas, mode=cfg.mode, scale=cfg.scale,
        radius=cfg.radius, indices=indices).to_dict()))


# ---------------------------------------------------------------------------------------------
# running


def _splits(spec: ProbeSpec, probe: Probe, evaluators: Mapping[str, Evaluator]) -> list[str]:
    if spec.splits is not None:
        missing = [s for s in spec.splits if s not in evaluators]
        if missing:
            raise UsageError(f"probe {spec.name!r}: no evaluator for split(s) {missing}; have {sorted(evaluators)}")
        return list(spec.splits)
    if probe.all_splits:
        return list(evaluators)
    return [next((s for s in probe.prefer_splits if s in evaluators), next(iter(evaluators)))]


def _subset(evaluator: Evaluator, max_examples: int | None, generator: torch.Generator) -> torch.Tensor | None:
    if max_examples is None or max_examples >= evaluator.n:
        return None
    if max_examples < 1:
        raise UsageError(f"max_examples must be >= 1, got {max_examples}")
    return torch.sort(torch.randperm(evaluator.n, generator=generator)[:max_examples]).values


def run_probes(model: torch.nn.Module, evaluators: Mapping[str, Evaluator], specs: Sequence[ProbeSpec | Mapping], *,
               generator: torch.Generator, progress: bool = True) -> dict[str, Any]:
    """Run ``specs`` in order on ``model`` (weights restored after each) and collect JSON-able
    results (module docstring). ``evaluators`` maps split names ("train", "nonmember", "dev", ...)
    to evaluators."""
    if not evaluators:
        raise UsageError("run_probes needs at least one evaluator")
    out: dict[str, Any] = {"curves": [], "sharpness": {}, "curvature": {}, "per_layer": {}}
    for raw in specs:
        spec = raw if isinstance(raw, ProbeSpec) else ProbeSpec.from_dict(raw)
        probe = PROBES.get(spec.name)
        cfg = make_config(probe.config_cls, spec.options, probe=spec.name)
        label = spec.label or spec.name
        splits = _splits(spec, probe, evaluators)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        gen = torch.Generator().manual_seed(seed)
        params = select_parameters(model, trainable_only=spec.params.trainable_only, include=spec.params.include,
                                   layers=spec.params.layers)
        if probe.all_splits:
            curves = probe.run(model, {s: evaluators[s] for s in splits}, params, cfg, gen, None, progress)
            out["curves"].extend({"label": label, **c.to_dict(), "seed": seed} for c in curves.values())
            continue
        section = out[probe.section]
        if label in section:
            raise UsageError(f"two probes labelled {label!r} in {probe.section}: give one a 'label'")
        section[label] = {}
        for s in splits:
            ev = evaluators[s]
            indices = _subset(ev, getattr(cfg, "max_examples", None), gen)
            res = probe.run(model, ev, params, cfg, gen, indices, progress)
            section[label][s] = {**res, "seed": seed, "n_examples": ev.n if indices is None else int(indices.numel())}
            if spec.name == "hessian-top":
                section.setdefault("lambda_max", res["value"])
            elif spec.name == "hessian-trace":
                section.setdefault("trace", res["value"])
                section.setdefault("trace_se", res["se"])
    return out


__all__ = ["CurveConfig", "DPFlatConfig", "HessianTopConfig", "HessianTraceConfig", "PROBES", "ParamSpec",
           "PrefixLayerConfig", "Probe", "ProbeSpec", "RhoConfig", "SECTIONS", "make_config", "run_probes"]
