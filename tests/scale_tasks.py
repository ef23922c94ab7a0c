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


def fake_arm(arm, d, *, settings, cache_dir, run_ids):
    """An arm that writes its directories as the real one does (a manifest with the recorded run
    id) and returns a row computed from its name; arm 'boom' raises."""
    import json

    from dp_audit.study.row import ArmRow

    if arm.name == "boom":
        raise RuntimeError("arm boom failed")
    for key, rid in run_ids.items():
        p = d / "run" if key == "run" else d / "step" / key
        p.mkdir(parents=True)
        (p / "manifest.json").write_text(json.dumps({"run_id": rid, "kind": "train" if key == "run" else "step-audit"}))
    i = int(arm.name[3:])
    return ArmRow(name=arm.name, label=arm.label, group=arm.group, claimed_epsilon=1.0,
                  step_constructions=arm.constructions, step_claim_epsilon=4.38, step_eps_lb=10.0 * i,
                  step_refuted=10.0 * i > 4.38, blackbox_eps_lb=0.0, blackbox_refuted=False)


def fake_sweep(point, d, *, settings, alpha, seed, run_ids):
    from dp_audit.study.row import SweepRow

    return SweepRow(name=point.name, sweep=point.sweep, construction=point.construction, option=point.option,
                    value=point.value, step_claim_epsilon=4.38, step_eps_lb=point.value * 100,
                    step_refuted=point.value * 100 > 4.38, alpha=alpha, seed=seed)
