"""Run the trials of a construction: N steps on d0 and N on d1, each scored by the statistic.

Randomness: ``np.random.SeedSequence(seed)`` spawns one child per side (d0, d1); each side's
trials are cut in chunks of ``chunk`` trials and chunk k gets its own ``torch.Generator`` seeded
from the k-th grandchild. Chunks of d0 and d1 therefore never share a stream, and the scores are
a deterministic function of (construction, seed, trials, chunk).

A chunk is one call of ``batched_step_fn(state, batch, generator, n)`` when the construction has
one (trials batched: one forward/backward per chunk), otherwise n calls of ``step_fn`` in a loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dp_audit.errors import UsageError
from dp_audit.stepaudit.construction import Construction

DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class TrialScores:
    d0: np.ndarray  # (N,) float64
    d1: np.ndarray
    seconds_d0: float
    seconds_d1: float
    batched: bool
    release_dim: int


def side_seeds(seed: int, n_chunks: int) -> list[list[int]]:
    """Per side (d0, d1), one 64-bit torch seed per chunk."""
    root = np.random.SeedSequence(int(seed))
    return [[int(c.generate_state(1, np.uint64)[0]) for c in side.spawn(n_chunks)] for side in root.spawn(2)]


def _as_2d(releases, n: int, name: str):
    import torch

    r = torch.as_tensor(releases)
    if r.dim() == 1 and n == 1:
        r = r.unsqueeze(0)
    if r.dim() != 2 or r.shape[0] != n:
        raise UsageError(f"construction {name!r}: expected {n} releases of shape (d,), got {tuple(r.shape)}")
    return r


def _score(cons: Construction, releases, n: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        s = cons.statistic(releases)
    s = np.asarray(torch.as_tensor(s).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1)
    if s.size != n:
        raise UsageError(f"construction {cons.name!r}: the statistic returned {s.size} scores for {n} releases")
    if not np.all(np.isfinite(s)):
        raise UsageError(f"construction {cons.name!r}: the statistic returned NaN or infinite scores")
    return s


def _chunk_releases(cons: Construction, batch, generator, n: int, batched: bool):
    import torch

    if batched:
        return _as_2d(cons.batched_step_fn(cons.state, batch, generator, n), n, cons.name)
    rows = []
    for _ in range(n):
        r = torch.as_tensor(cons.step_fn(cons.state, batch, generator)).detach()
        if r.dim() != 1:
            raise UsageError(f"construction {cons.name!r}: step_fn must return a 1-D tensor, got shape {tuple(r.shape)}")
        rows.append(r)
    return torch.stack(rows)


def _k_step_releases(cons: Construction, batch, generator, n: int, steps: int, batched: bool, bar):
    import torch

    if batched:
        out = _as_2d(cons.batched_steps_fn(cons.state, batch, generator, n, steps), n, cons.name)
        bar.update(n)
        return out
    rows = []
    for _ in range(n):
        state, total = cons.state, None
        for _ in range(steps):
            r = torch.as_tensor(cons.step_fn(state, batch, generator)).detach()
            if r.dim() != 1:
                raise UsageError(f"construction {cons.name!r}: step_fn must return a 1-D tensor, got shape "
                                 f"{tuple(r.shape)}")
            total = r.clone() if total is None else total + r
            state = cons.advance(state, r)
        rows.append(total)
        bar.update(1)
    return torch.stack(rows)


_BUILT: dict[str, Construction] = {}  # per worker process: spec -> construction


def chunk_job(name: str, options: dict, side: int, n: int, seed: int, steps: int, batched: bool) -> dict:
    """One chunk of trials as a scale-out task (plain data in and out): rebuild the construction
    from its spec, run ``n`` trials of ``side`` (0: d0, 1: d1) with the chunk's own seed, return the
    scores (JSON floats round-trip exactly) and the release dimension."""
    import json

    import torch

    from dp_audit.stepaudit.constructions import build

    key = json.dumps([name, options], sort_keys=True)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = build(name, **options)
    cons = _BUILT[key]
    batch = (cons.d0, cons.d1)[side]
    gen = torch.Generator().manual_seed(int(seed))
    if steps == 1:
        releases = _chunk_releases(cons, batch, gen, n, batched)
    else:
        from tqdm.auto import tqdm

        releases = _k_step_releases(cons, batch, gen, n, steps, batched, tqdm(disable=True))
    return {"scores": [float(x) for x in _score(cons, releases, n)], "dim": int(releases.shape[1])}


def _scaled_trials(cons: Construction, sizes: list[int], seeds: list[list[int]], *, steps: int, batched: bool,
                   scale, progress: bool) -> TrialScores:
    from dp_audit.scale import Task, run_tasks

    if cons.spec is None:
        raise UsageError(f"construction {cons.name!r} cannot run on a scale-out backend: only constructions built "
                         "by name (dp_audit.stepaudit.constructions.build, the CLI) can be rebuilt in a worker")
    tasks = [Task(key=f"d{side}-chunk{k:05d}", fn="dp_audit.stepaudit.trials:chunk_job",
                  kwargs={"name": cons.spec["name"], "options": cons.spec["options"], "side": side, "n": n,
                          "seed": s, "steps": steps, "batched": batched})
             for side in (0, 1) for k, (n, s) in enumerate(zip(sizes, seeds[side]))]
    t0 = time.perf_counter()
    done = run_tasks(tasks, scale=scale, desc=f"step audit {cons.name} (chunks)", progress=progress)
    wall = time.perf_counter() - t0
    half = len(sizes)
    side0 = np.concatenate([np.asarray(r["scores"], dtype=np.float64) for r in done[:half]])
    side1 = np.concatenate([np.asarray(r["scores"], dtype=np.float64) for r in done[half:]])
    # wall time of both sides together, halved: the chunks of d0 and d1 ran interleaved
    return TrialScores(d0=side0, d1=side1, seconds_d0=wall / 2, seconds_d1=wall / 2, batched=batched,
                       release_dim=int(done[-1]["dim"]))


def run_trials(cons: Construction, *, trials: int, seed: int, chunk: int = DEFAULT_CHUNK, progress: bool = True,
               batched: bool | None = None, steps: int = 1, scale=None) -> TrialScores:
    """Scores of ``trials`` trials on d0 and ``trials`` on d1, each trial ``steps`` consecutive steps
    (``batched`` None: use ``batched_step_fn`` / ``batched_steps_fn`` when the construction has one).
    ``scale`` (a :class:`dp_audit.scale.ScaleConfig`): run the chunks as tasks on its backend; the
    scores are the same chunk by chunk (same seeds), computed with ``scale.threads`` torch threads."""
    import torch
    from tqdm.auto import tqdm

    if not isinstance(trials, int) or trials < 2:
        raise UsageError(f"trials must be an integer >= 2, got {trials!r}")
    if chunk < 1:
        raise UsageError(f"chunk must be >= 1, got {chunk}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got {steps!r}")
    if steps > 1 and cons.advance is None:
        raise UsageError(f"construction {cons.name!r} does not say how its state evolves (no advance): "
                         "it supports single-step audits only (steps 1)")
    fn, what = (cons.batched_step_fn, "batched_step_fn") if steps == 1 else (cons.batched_steps_fn, "batched_steps_fn")
    use_batched = fn is not None if batched is None else bool(batched)
    if use_batched and fn is None:
        raise UsageError(f"construction {cons.name!r} has no {what}" + ("" if steps == 1 else
                         f": its {steps}-step trials run unbatched (batched=False / drop --batched)"))
    sizes = [min(chunk, trials - s) for s in range(0, trials, chunk)]
    seeds = side_seeds(seed, len(sizes))
    if scale is not None:
        return _scaled_trials(cons, sizes, seeds, steps=steps, batched=use_batched, scale=scale, progress=progress)
    out, secs, dim = [], [], 0
    bar = tqdm(total=2 * trials, desc=f"step audit {cons.name}", disable=not progress, leave=False, unit="trial")
    for side, batch in enumerate((cons.d0, cons.d1)):
        t0 = time.perf_counter()
        parts = []
        for n, s in zip(sizes, seeds[side]):
            gen = torch.Generator().manual_seed(s)
            if steps == 1:
                releases = _chunk_releases(cons, batch, gen, n, use_batched)
                bar.update(n)
            else:
                releases = _k_step_releases(cons, batch, gen, n, steps, use_batched, bar)
            dim = int(releases.shape[1])
            parts.append(_score(cons, releases, n))
        secs.append(time.perf_counter() - t0)
        out.append(np.concatenate(parts))
    bar.close()
    return TrialScores(d0=out[0], d1=out[1], seconds_d0=secs[0], seconds_d1=secs[1], batched=use_batched,
                       release_dim=dim)


__all__ = ["DEFAULT_CHUNK", "TrialScores", "run_trials", "side_seeds"]
