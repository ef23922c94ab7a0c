"""A sweep is one family of tests: its points share α, and each point has its own seed.

Every point of a sweep (e.g. the AWP radius γ at 4 values) is a step-level audit whose refutation
is read together with the others ("where does the leak start?"). Tested each at α, a sweep of K
points on a mechanism that keeps its claim would refute somewhere with probability up to
1 − (1 − α)^K (19% for K = 4 at α = 0.05). So the family shares α by **Bonferroni**: each point
runs at α/K. Bonferroni rather than Holm because a step audit reports a *lower bound* at its
level, not a p-value: Bonferroni makes the K bounds hold simultaneously with probability ≥ 1 − α
(every number in the sweep's table is a valid bound at once), which Holm's step-down does not
give, and it needs no p-value that the calibration-split estimators do not produce.

Seeds: each point's step-audit seed is drawn from ``SeedSequence(entropy=study seed,
spawn_key=sha256 of the point's definition)``: distinct between points (their trials are
independent, as the union bound assumes nothing but which the table reads as separate
measurements), the same on every rerun (resuming reproduces the numbers), and independent of the
point's position in the list (adding a point does not change the others' seeds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from dp_audit.study.arms import SweepPoint

CORRECTION = "bonferroni"


@dataclass(frozen=True)
class PointPlan:
    point: SweepPoint
    alpha: float  # the point's share: α / family_size
    seed: int  # its step audit's seed (derived, recorded)
    family_size: int


def point_identity(point: SweepPoint) -> dict[str, Any]:
    """What identifies a point for its seed: its sweep, construction, option, value and options."""
    return {"sweep": point.sweep, "construction": point.construction, "option": point.option,
            "value": float(point.value), "options": dict(point.options)}


def point_seed(study_seed: int, point: SweepPoint) -> int:
    """The point's step-audit seed in [0, 2**63): from the study seed and the point's definition."""
    text = json.dumps(point_identity(point), sort_keys=True, separators=(",", ":"), default=str)
    words = np.frombuffer(hashlib.sha256(text.encode("utf-8")).digest(), dtype=np.uint32)
    ss = np.random.SeedSequence(entropy=int(study_seed), spawn_key=tuple(int(w) for w in words))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def arm_step_seeds(study_seed: int, arm_name: str, n: int) -> tuple[int, ...]:
    """The step-audit seeds of an arm's ``n`` constructions, each in [0, 2**63): the arm's own
    stream ``SeedSequence(entropy=study seed, spawn_key=sha256 of "arm:<name>")``, spawned into
    ``n`` children (one per construction, in order). Two arms never share trials (the old
    ``seed·1000 + j`` gave the "AWP only" and "all three" arms the same AWP trials), a rerun gets
    the same seeds, and adding an arm changes no other arm's seeds."""
    words = np.frombuffer(hashlib.sha256(f"arm:{arm_name}".encode("utf-8")).digest(), dtype=np.uint32)
    root = np.random.SeedSequence(entropy=int(study_seed), spawn_key=tuple(int(w) for w in words))
    return tuple(int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in root.spawn(int(n)))


def point_alpha(alpha: float, family_size: int) -> float:
    """Bonferroni: the family's α split evenly over its points."""
    if family_size < 1:
        raise ValueError(f"a sweep family needs at least one point, got {family_size}")
    return float(alpha) / int(family_size)


def sweep_plan(points: Sequence[SweepPoint], *, settings: Mapping[str, Any]) -> tuple[PointPlan, ...]:
    """Each point with its α share (its sweep's family size) and its derived seed, in input order."""
    sizes: dict[str, int] = {}
    for p in points:
        sizes[p.sweep] = sizes.get(p.sweep, 0) + 1
    return tuple(PointPlan(point=p, alpha=point_alpha(settings["alpha"], sizes[p.sweep]),
                           seed=point_seed(settings["seed"], p), family_size=sizes[p.sweep]) for p in points)


__all__ = ["CORRECTION", "PointPlan", "arm_step_seeds", "point_alpha", "point_identity", "point_seed", "sweep_plan"]
