"""Backends: where task attempts run. Each has ``submit(task, attempt) -> handle``,
``wait(handles) -> [(handle, result dict)]`` (at least one finished) and ``close(abort=...)``
(``abort``: the parent was interrupted; stop running attempts now instead of waiting for them).

A result of an attempt whose worker process died carries ``"crash": True`` and ``"alone"``:
whether that attempt was the only one in its worker pool from its submission to its failure. A
dead pool worker takes every running attempt of its pool with it, so only a crash alone says
which task died. "Alone when the failure was seen" would not do: CPython's pool can notice a
dead worker late (its manager thread watches the workers it knew when it last woke, and a worker
spawned for a later submission joins that list only at its next wake-up, e.g. when a pool mate
finishes), so a task that died next to another may be reported after the other has finished."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
from typing import Any

from dp_audit.errors import UsageError
from dp_audit.scale.config import ScaleConfig
from dp_audit.scale.task import Task, execute


def _crashed(exc: BaseException, where: str, *, alone: bool = True) -> dict[str, Any]:
    from dp_audit.safetext import one_line

    return {"ok": False, "kind": "internal", "message": one_line(f"{where}: {type(exc).__name__}: {exc}"),
            "log": "(the worker died before writing a log)", "crash": True, "alone": alone}


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

    def close(self, *, abort: bool = False) -> None:
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
    (killed, out of memory) breaks the pool: every attempt the pool was running fails (each
    result says whether it ran alone) and a new pool starts. Attempts submitted to the new pool
    are never touched by the old pool's failures arriving later."""

    def __init__(self, cfg: ScaleConfig, log_dir: str, n_tasks: int):
        self.cfg, self.log_dir = cfg, log_dir
        self.n = max(1, min(cfg.n_workers, n_tasks))
        self._owner: dict[Any, cf.ProcessPoolExecutor] = {}  # uncollected future -> its pool
        self._shared: set[Any] = set()  # uncollected futures that ever had an uncollected pool mate
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.n, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=die_with_parent, initargs=(os.getpid(),))

    def submit(self, task: Task, attempt: int) -> Any:
        args = (execute, task.key, task.fn, task.kwargs)
        kwargs = {"attempt": attempt, "log_dir": self.log_dir, "threads": self.cfg.threads}
        try:
            fut = self._pool.submit(*args, **kwargs)
        except cf.BrokenExecutor:  # broke since the last wait: its attempts come back as crashes
            self._pool = self._new_pool()
            fut = self._pool.submit(*args, **kwargs)
        # CPython wakes the pool's manager thread before it spawns the worker for this submission,
        # so the thread may go on watching the old worker list and notice this worker's death only
        # at its next wake-up (a pool mate finishing: hours, for a long task). Wake it again now
        # that the worker exists (a private attribute: absent elsewhere, then detection is late).
        # Under the pool's shutdown lock, as CPython's own submit does: the manager thread closes the
        # pipe under that lock when the pool breaks, and a write racing with the close could hit a
        # closed (or reused) descriptor or raise TypeError out of submit.
        lock = getattr(self._pool, "_shutdown_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            wakeup = getattr(self._pool, "_executor_manager_thread_wakeup", None)
            if wakeup is not None:
                try:
                    wakeup.wakeup()
                except (OSError, ValueError):  # closed: the pool broke or shut down meanwhile
                    pass
        mates = [f for f, pool in self._owner.items() if pool is self._pool]
        if mates:
            self._shared.update(mates)
            self._shared.add(fut)
        self._owner[fut] = self._pool
        return fut

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            pool = self._owner.pop(fut)
            shared = fut in self._shared
            self._shared.discard(fut)
            try:
                out.append((fut, fut.result()))
            except cf.BrokenExecutor as exc:
                out.append((fut, _crashed(exc, "worker process died", alone=not shared)))
                if pool is self._pool:
                    pool.shutdown(wait=False)
                    self._pool = self._new_pool()
        return out

    def close(self, *, abort: bool = False) -> None:
        if not abort:
            self._pool.shutdown(wait=True, cancel_futures=True)
            return
        # interrupted: the running attempts would otherwise hold the parent until they finish
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=5)


def _check_reachable(address: str, *, timeout: float = 10.0) -> None:
    """A ``HOST:PORT`` Ray address that nothing answers on makes ``ray.init`` retry for minutes;
    refuse it at once, in one line. ``auto`` and ``ray://`` addresses are Ray's to check."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"scale.ray_address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"cannot join Ray at {address}: {exc.strerror or type(exc).__name__}") from None


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
                _check_reachable(cfg.ray_address)
                kwargs["address"] = cfg.ray_address
            else:
                kwargs["num_cpus"] = cfg.n_workers
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UsageError(f"cannot start or join Ray (address {cfg.ray_address or 'local'}): {exc}") from None
            self._owned = True
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        self._inflight: set[Any] = set()

    def submit(self, task: Task, attempt: int) -> Any:
        ref = self._remote.remote(task.key, task.fn, task.kwargs, attempt=attempt, log_dir=self.log_dir,
                                  threads=self.cfg.threads)
        self._inflight.add(ref)
        return ref

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            self._inflight.discard(ref)
            try:
                out.append((ref, self.ray.get(ref)))
            except self.ray.exceptions.RayError as exc:
                out.append((ref, _crashed(exc, "Ray worker failed")))
        return out

    def close(self, *, abort: bool = False) -> None:
        if abort:  # interrupted: stop this run's tasks (a joined cluster keeps running otherwise)
            for ref in self._inflight:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        if self._owned:
            self.ray.shutdown()


def make_backend(cfg: ScaleConfig, *, log_dir: str, n_tasks: int):
    if cfg.backend == "ray":
        return RayBackend(cfg, log_dir)
    if min(cfg.n_workers, n_tasks) <= 1:
        return SerialBackend(cfg, log_dir)
    return LocalBackend(cfg, log_dir, n_tasks)
