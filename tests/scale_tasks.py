"""Task functions for tests/test_scale.py (importable by spawned workers and Ray workers)."""

from __future__ import annotations

import os
from pathlib import Path


def square(x: int) -> int:
    return x * x


def flaky(x: int, marker: str) -> int:
    """Raises on its first attempt (no marker file yet), succeeds afterwards."""
    m = Path(marker)
    if not m.exists():
        m.write_text("failed once\n")
        raise RuntimeError(f"transient failure of task {x}")
    return x * 10


def dies_once(x: int, marker: str) -> int:
    """Kills its worker process on the first attempt (a crash, not an exception)."""
    m = Path(marker)
    if not m.exists():
        m.write_text("died once\n")
        os._exit(13)
    return x + 100


def always_fails(x: int) -> int:
    raise ValueError(f"broken task {x}")


def usage_error(x: int) -> int:
    from dp_audit.errors import UsageError

    raise UsageError(f"bad option in task {x}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def tensor_sum(seed: int) -> list[float]:
    """A reduction whose bits depend on the thread count if the task's threads are not fixed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 300, generator=g)
    return (x @ x).sum(dim=0)[:5].tolist()


def always_dies(x: int, delay: float) -> int:
    """Kills its worker process on every attempt, ``delay`` seconds after it started."""
    import time

    time.sleep(delay)
    os._exit(13)


def slow_marked(x: int, seconds: float, started: str, finished: str) -> int:
    """Writes its pid to ``started``, sleeps, then touches ``finished``."""
    import time

    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(finished).write_text("done\n")
    return x


def not_json(x: int) -> object:
    return {x, x + 1}  # a set: not JSON
