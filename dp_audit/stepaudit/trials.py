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


def run_trials(cons: Construction, *, trials: int, seed: int, chunk: int = DEFAULT_CHUNK, progress: bool = True,
               batched: bool | None = None, steps: int = 1) -> TrialScores:
    """Scores of ``trials`` trials on d0 and ``trials`` on d1, each trial ``steps`` consecutive steps
    (``batched`` None: use ``batched_step_fn`` / ``batched_steps_fn`` when the construction has one)."""
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
