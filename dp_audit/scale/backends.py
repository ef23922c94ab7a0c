"""Backends: where task attempts run. Each has ``submit(task, attempt) -> handle``,
``wait(handles) -> [(handle, result dict)]`` (at least one finished) and ``close()``."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any

from dp_audit.errors import UsageError
from dp_audit.scale.config import ScaleConfig
from dp_audit.scale.task import Task, execute


def _crashed(exc: BaseException, where: str) -> dict[str, Any]:
    from dp_audit.safetext import one_line

    return {"ok": False, "kind": "internal", "message": one_line(f"{where}: {type(exc).__name__}: {exc}"),
            "log": "(the worker died before writing a log)"}


class SerialBackend:
    """One worker: run each attempt in this process, in order (no pool to start)."""

    def __init__(self, cfg: ScaleConfig, log_dir: str):
        self.cfg, self.log_dir, self._done = cfg, log_dir, []

    def submit(self, task: Task, attempt: int) -> Any:
        handle = object()
        self._done.append((handle, execute(task.key, task.fn, task.kwargs, attempt=attempt, log_dir=self.log_dir,
                                           threads=self.cfg.threads)))
        return handle

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


def die_with_parent(parent: int) -> None:
    """Worker initializer: a worker outlives a killed parent otherwise (it keeps running the tasks
    already queued, writing files, holding CPUs). Linux: the kernel sends SIGTERM when the parent
    dies (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread watches the parent's pid."""
    import signal
    import threading
    import time

    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="dp-audit-parent-watch").start()


class LocalBackend:
    """A pool of spawned processes (fork is unsafe with torch's threads). A worker that dies
    (killed, out of memory) breaks the pool: its running attempts fail and a new pool starts."""

    def __init__(self, cfg: ScaleConfig, log_dir: str, n_tasks: int):
        self.cfg, self.log_dir = cfg, log_dir
        self.n = max(1, min(cfg.n_workers, n_tasks))
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.n, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=die_with_parent, initargs=(os.getpid(),))

    def submit(self, task: Task, attempt: int) -> Any:
        try:
            return self._pool.submit(execute, task.key, task.fn, task.kwargs, attempt=attempt, log_dir=self.log_dir,
                                     threads=self.cfg.threads)
        except cf.BrokenExecutor:
            self._pool = self._new_pool()
            return self._pool.submit(execute, task.key, task.fn, task.kwargs, attempt=attempt, log_dir=self.log_dir,
                                     threads=self.cfg.threads)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            try:
                out.append((fut, fut.result()))
            except cf.BrokenExecutor as exc:
                out.append((fut, _crashed(exc, "worker process died")))
        if any(not r["ok"] and r["log"].startswith("(the worker died") for _, r in out):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Ray tasks (one CPU each). Joins ``cfg.ray_address`` when set, else starts a local Ray with
    ``cfg.n_workers`` CPUs; an already initialised Ray (a test fixture, a notebook) is reused and
    left running. Retries are the scheduler's, so that both backends count attempts the same way."""

    def __init__(self, cfg: ScaleConfig, log_dir: str):
        try:
            import ray
        except ImportError:
            raise UsageError("scale.backend = 'ray' needs Ray: pip install 'dp-audit[ray]'") from None
        self.ray, self.cfg, self.log_dir = ray, cfg, log_dir
        self._owned = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if cfg.ray_address:
                kwargs["address"] = cfg.ray_address
            else:
                kwargs["num_cpus"] = cfg.n_workers
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UsageError(f"cannot start or join Ray (address {cfg.ray_address or 'local'}): {exc}") from None
            self._owned = True
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute)

    def submit(self, task: Task, attempt: int) -> Any:
        return self._remote.remote(task.key, task.fn, task.kwargs, attempt=attempt, log_dir=self.log_dir,
                                   threads=self.cfg.threads)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except self.ray.exceptions.RayError as exc:
                out.append((ref, _crashed(exc, "Ray worker failed")))
        return out

    def close(self) -> None:
        if self._owned:
            self.ray.shutdown()


def make_backend(cfg: ScaleConfig, *, log_dir: str, n_tasks: int):
    if cfg.backend == "ray":
        return RayBackend(cfg, log_dir)
    if min(cfg.n_workers, n_tasks) <= 1:
        return SerialBackend(cfg, log_dir)
    return LocalBackend(cfg, log_dir, n_tasks)
