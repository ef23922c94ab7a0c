"""The scheduler: run tasks on a backend with bounded retries and one progress bar."""

from __future__ import annotations

import tempfile
from typing import Any, Sequence

from dp_audit.errors import EXIT_INTERNAL, DPAuditError, IntegrityError, UsageError
from dp_audit.scale.backends import make_backend
from dp_audit.scale.config import ScaleConfig
from dp_audit.scale.task import Task


class TaskFailed(DPAuditError):
    """A task kept raising an unforeseen error after its retries (exit 4: not a verdict)."""

    exit_code = EXIT_INTERNAL


def run_tasks(tasks: Sequence[Task], *, scale: ScaleConfig | None = None, desc: str = "tasks",
              progress: bool = True, log_dir: str | None = None) -> list[Any]:
    """Run every task; return their values in the order of ``tasks``.

    An unforeseen error is retried up to ``scale.retries`` times; a usage or integrity error is
    not (it would only repeat) and is raised as such. A worker that died counts as a failed
    attempt of the task it ran, and only of that task: when a dead pool worker takes several
    running attempts with it (which one died is unknown), they are rerun one at a time, uncharged,
    so that a crash is only ever charged to a task that ran alone. On a final failure nothing new
    starts, running attempts finish (their outputs stay, so a rerun resumes), and the error names
    the task and its log file in one line. An interrupt (Ctrl-C) stops the running attempts.
    """
    from tqdm.auto import tqdm

    scale = scale or ScaleConfig()
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise UsageError("task keys must be unique")
    if not tasks:
        return []
    log_dir = log_dir or tempfile.mkdtemp(prefix="dp-audit-tasks-")
    backend = make_backend(scale, log_dir=log_dir, n_tasks=len(tasks))
    values: dict[str, Any] = {}
    attempts = {t.key: 0 for t in tasks}  # attempts started (names the log files)
    charged = {t.key: 0 for t in tasks}  # failed attempts held against the task's retries
    isolate: set[str] = set()  # crashed next to others: rerun alone before anything else
    queue = list(tasks)
    running: dict[Any, Task] = {}
    failed_attempts = 0
    error: DPAuditError | None = None
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, unit="task")
    slots = backend.n if hasattr(backend, "n") else scale.n_workers if scale.backend == "local" else len(tasks)
    aborted = True
    try:
        while (queue and error is None) or running:
            while queue and error is None:
                if isolate:
                    if running:
                        break
                    task = next(t for t in queue if t.key in isolate)
                    queue.remove(task)
                elif len(running) < max(1, slots):
                    task = queue.pop(0)
                else:
                    break
                attempts[task.key] += 1
                running[backend.submit(task, attempts[task.key])] = task
            for handle, result in backend.wait(list(running)):
                task = running.pop(handle)
                isolate.discard(task.key)
                if result["ok"]:
                    values[task.key] = result["value"]
                    bar.update(1)
                elif error is None:
                    failed_attempts += 1
                    where = f"task {task.key}"
                    if result.get("crash") and not result.get("alone", True):
                        isolate.add(task.key)
                        queue.insert(0, task)
                        continue
                    charged[task.key] += 1
                    if result["kind"] == "usage":
                        error = UsageError(f"{where}: {result['message']} (log: {result['log']})")
                    elif result["kind"] == "integrity":
                        error = IntegrityError(f"{where}: {result['message']} (log: {result['log']})")
                    elif charged[task.key] <= scale.retries and result.get("retry", True):
                        queue.insert(0, task)
                    else:
                        error = TaskFailed(f"{where} failed after {charged[task.key]} attempts: {result['message']} "
                                           f"(log: {result['log']})")
                bar.set_postfix(running=len(running), retried=failed_attempts, refresh=False)
        aborted = False
    finally:
        bar.close()
        backend.close(abort=aborted)
    if error is not None:
        raise error
    return [values[k] for k in keys]
