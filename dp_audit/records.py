"""Frozen result records. Their ``to_dict`` forms are the pieces of ``audit.json`` (DESIGN.md §3,
docs/formats.md). Every record round-trips through ``from_dict``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

THREAT_MODELS = ("black-box", "white-box", "step-level")


def _from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class EpsilonEstimate:
    """One empirical ε estimate from one score set (DESIGN.md §6).

    ``epsilon_lb`` is a lower bound at confidence 1 - ``alpha`` when ``is_bound`` is true; the
    ``raw`` method sets ``is_bound`` false (a point estimate, not a bound).
    """

    method: str
    epsilon_lb: float
    alpha: float
    delta: float
    m: int
    threshold: str
    threat_model: str = "black-box"
    is_bound: bool = True
    r: int | None = None
    v: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    attack: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpsilonEstimate":
        return _from_dict(cls, data)

    def with_attack(self, attack: str) -> "EpsilonEstimate":
        return dataclasses.replace(self, attack=attack)


@dataclass(frozen=True)
class AttackResult:
    """Metrics of one membership inference attack on one score set."""

    name: str
    auc: float
    n_members: int
    n_nonmembers: int
    scores_file: str
    threat_model: str = "black-box"
    auc_ci: tuple[float, float] | None = None
    tpr_at_fpr: dict[str, float] = field(default_factory=dict)
    tpr_at_fpr_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttackResult":
        obj = _from_dict(cls, data)
        if obj.auc_ci is not None:
            obj = dataclasses.replace(obj, auc_ci=tuple(obj.auc_ci))
        return obj


@dataclass(frozen=True)
class PrivacyClaim:
    """What the training run claims, and which parts of it no accountant covered."""

    epsilon: float
    delta: float
    accountant: str
    unaccounted: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyClaim":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class Verdict:
    """The gate's decision: refuted when the largest valid ε_LB exceeds claim + tolerance."""

    status: str  # "pass" | "fail"
    claimed_epsilon: float
    epsilon_lb_max: float
    alpha: float
    alpha_per_test: float
    n_tests: int
    tolerance: float = 0.0
    best_attack: str | None = None
    best_method: str | None = None
    threat_model: str = "black-box"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Verdict":
        return _from_dict(cls, data)
