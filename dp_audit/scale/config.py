"""The ``[scale]`` options: which backend runs independent tasks, with how many workers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dp_audit.errors import UsageError

BACKENDS = ("local", "ray")


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ScaleConfig:
    """``backend``: local (process pool) | ray. ``workers``: processes (local) or CPUs of a local
    Ray (0: every core; ignored when joining a cluster). ``retries``: extra attempts of a task that
    raised an unforeseen error. ``threads``: torch threads inside each task (1 keeps results
    identical for any worker count and backend). ``ray_address``: join this Ray cluster
    ("auto" or "ray://host:10001"); empty: start a local Ray."""

    backend: str = "local"
    workers: int = 0
    retries: int = 2
    threads: int = 1
    ray_address: str = ""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"scale.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for key in ("workers", "retries"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"scale.{key} must be an integer >= 0, got {value!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise UsageError(f"scale.threads must be an integer >= 1, got {self.threads!r}")
        if not isinstance(self.ray_address, str):
            raise UsageError(f"scale.ray_address must be a string, got {self.ray_address!r}")
        if self.ray_address and self.backend != "ray":
            raise UsageError("scale.ray_address is set but scale.backend is not 'ray'")

    @property
    def n_workers(self) -> int:
        return self.workers or default_workers()
