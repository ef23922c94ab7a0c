"""Scale-out of independent audit work (DESIGN.md §10, docs/scale-out.md).

A :class:`~dp_audit.scale.task.Task` is a pure function of its (JSON) arguments, named by an
importable ``"module:function"`` path, that writes its own output and returns it; finished tasks
are skipped by the function itself (e.g. a reference model whose file's recorded digest matches).
:func:`~dp_audit.scale.runner.run_tasks` runs a list of them on a backend: ``local`` (a process
pool, the default) or ``ray`` (Ray tasks, a local Ray or ``--ray-address`` to join a cluster),
with bounded retries, one progress bar and one-line failures that name their log file.
"""

from dp_audit.scale.config import BACKENDS, ScaleConfig
from dp_audit.scale.runner import TaskFailed, run_tasks
from dp_audit.scale.task import Task

__all__ = ["BACKENDS", "ScaleConfig", "Task", "TaskFailed", "run_tasks"]
