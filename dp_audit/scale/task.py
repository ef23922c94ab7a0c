"""One unit of independent work and how a worker executes it.

A task names its function by an importable ``"package.module:function"`` path and passes only
JSON-able keyword arguments, so any process or Ray worker that has dp-audit installed can run it
and nothing but plain data crosses process boundaries. The worker returns a plain dict (never an
exception object): ``{"ok": True, "value": ...}`` or ``{"ok": False, "kind": "usage" | "integrity" |
"internal", "message": one line, "log": traceback file, "retry": worth another attempt}``.
"""

from __future__ import annotations

import importlib
import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dp_audit.errors import IntegrityError, UsageError


@dataclass(frozen=True)
class Task:
    key: str  # unique within one run_tasks call; names the task in progress, errors and logs
    fn: str  # "package.module:function"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key or any(c in self.key for c in "/\\\0"):
            raise UsageError(f"task key must be a non-empty name without path separators, got {self.key!r}")
        if ":" not in self.fn:
            raise UsageError(f"task function must be 'module:function', got {self.fn!r}")
        try:
            json.dumps(self.kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"task {self.key}: arguments must be plain JSON data ({exc})") from None


def resolve(fn: str) -> Callable[..., Any]:
    module, _, name = fn.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"task function {fn!r} cannot be imported: {exc}") from None
    if not callable(obj):
        raise UsageError(f"task function {fn!r} is not callable")
    return obj


class NotPlainData(TypeError):
    """A task returned something JSON cannot hold: a bug of the task, which a retry only repeats."""


def _one_line(exc: BaseException) -> str:
    from dp_audit.safetext import one_line

    return one_line(f"{type(exc).__name__}: {exc}" if not isinstance(exc, (UsageError, IntegrityError)) else str(exc))


def execute(key: str, fn: str, kwargs: dict[str, Any], *, attempt: int, log_dir: str, threads: int) -> dict[str, Any]:
    """Run one task attempt in this process with ``threads`` torch threads; never raises."""
    try:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        previous = None
    try:
        value = resolve(fn)(**kwargs)
        try:
            json.dumps(value, allow_nan=False)  # results are plain data too
        except (TypeError, ValueError) as exc:
            raise NotPlainData(f"{fn} returned a value that is not plain JSON data ({exc})") from None
        return {"ok": True, "value": value}
    except BaseException as exc:  # noqa: BLE001 - reported to the scheduler as data
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind = "usage" if isinstance(exc, UsageError) else "integrity" if isinstance(exc, IntegrityError) else "internal"
        log = Path(log_dir) / f"{key}.attempt{attempt}.log"
        try:
            os.makedirs(log_dir, exist_ok=True)
            log.write_text(f"task {key} ({fn}) attempt {attempt}\n{traceback.format_exc()}")
        except OSError:
            log = Path("(log not written)")
        return {"ok": False, "kind": kind, "message": _one_line(exc), "log": str(log),
                "retry": not isinstance(exc, NotPlainData)}
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)
