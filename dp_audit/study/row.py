"""One arm's (or sweep point's) result, and its hash-checked file ``result.json``.

The file holds ``{"kind", "settings", "definition", "row", "sha256"}`` where ``sha256`` is the
canonical fingerprint of ``row``, ``settings`` and ``definition`` (what the arm or sweep point *is*:
its merged run config, its step constructions and options, the tool version); a file whose hash,
kind, settings, definition or name does not match is not a result (the arm is done again): a
result of an older arm definition is stale, never reused. ``None`` numbers are "-" in the tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dp_audit.io import atomic_write_json, canonical_fingerprint

RESULT = "result.json"
ARM_KIND = "study-arm"
SWEEP_KIND = "study-sweep-point"


@dataclass(frozen=True)
class ArmRow:
    name: str
    label: str
    group: str
    claimed_epsilon: float | None  # the run's claim (accountant over the ledger)
    step_constructions: tuple[str, ...] = ()
    step_claim_epsilon: float | None = None  # per-step claim of the construction(s)
    step_eps_lb: float | None = None  # max over the constructions, each at α/k
    step_refuted: bool | None = None
    blackbox_eps_lb: float | None = None  # end-to-end one-run (largest counted black-box bound of the gate)
    blackbox_refuted: bool | None = None
    whitebox_eps_lb: float | None = None  # audit.json estimates with threat_model "white-box", if any
    mia_auc: float | None = None
    mia_tpr_at_1pct_fpr: float | None = None
    test_accuracy: float | None = None
    component: str = ""
    # per construction: {"eps_lb", "claim_epsilon", "refuted"} (each at its α/k): which component refutes
    step_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["step_constructions"] = list(self.step_constructions)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArmRow":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["step_constructions"] = tuple(kw.get("step_constructions") or ())
        return cls(**kw)


@dataclass(frozen=True)
class SweepRow:
    name: str
    sweep: str
    construction: str
    option: str
    value: float
    step_claim_epsilon: float
    step_eps_lb: float
    step_refuted: bool
    alpha: float | None = None  # the point's share of its sweep's α (Bonferroni over the sweep's points)
    seed: int | None = None  # the point's own step-audit seed (derived from the study seed and the point)
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepRow":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _digest(kind: str, settings: Mapping[str, Any], definition: Any, row: Mapping[str, Any]) -> str:
    return canonical_fingerprint({"kind": kind, "settings": dict(settings), "definition": definition,
                                  "row": dict(row)})


def write_result(path: Path, row: ArmRow | SweepRow, *, settings: Mapping[str, Any],
                 definition: Mapping[str, Any]) -> Path:
    kind = ARM_KIND if isinstance(row, ArmRow) else SWEEP_KIND
    d, definition = row.to_dict(), _plain(definition)
    return atomic_write_json(path, {"kind": kind, "settings": dict(settings), "definition": definition, "row": d,
                                    "sha256": _digest(kind, settings, definition, d)})


def read_result(path: Path, *, name: str, settings: Mapping[str, Any],
                definition: Mapping[str, Any]) -> ArmRow | SweepRow | None:
    """The row in ``path`` if it is a complete, unaltered result of ``name`` under ``settings`` and
    the current ``definition`` of that arm (or sweep point); else None (absent, unreadable, edited,
    another arm's or another study's, or stale: computed for an older definition)."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        kind, row = data["kind"], data["row"]
        if data["settings"] != _plain(settings) or row.get("name") != name:
            return None
        if data.get("definition") != _plain(definition):
            return None
        if data["sha256"] != _digest(kind, data["settings"], data["definition"], row):
            return None
        cls = {ARM_KIND: ArmRow, SWEEP_KIND: SweepRow}[kind]
        return cls.from_dict(row)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _plain(obj: Mapping[str, Any]) -> Any:
    import json

    from dp_audit.io import dumps_json

    return json.loads(dumps_json(dict(obj)))
