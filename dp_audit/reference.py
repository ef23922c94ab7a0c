"""Reference (shadow) models for LiRA / RMIA / reference-loss attacks (DESIGN.md §5, §10).

Each reference model is trained by the run's own trainer and config on a random half of the
private pool, with every canary included independently with probability 1/2 (so each canary
has IN and OUT reference models). A task is a pure function of (run config, seed, index) and
writes ``references/ref-XXX.npz`` (the canary signals under that model plus its IN mask);
finished tasks are skipped, so an interrupted audit resumes where it stopped. Scale-out over
processes or Ray (§10) only has to map :func:`reference_task` over indices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

REF_DIR = "references"


def reference_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / REF_DIR / f"ref-{index:03d}.npz"


def reference_task(run_dir: str | Path, manifest: dict[str, Any], index: int, *, seed: int, batch_size: int = 64) -> Path:
    """Train reference model ``index`` and store the signals of the run's canaries under it."""
    import torch

    from dp_audit.attacks.signals import compute_signals
    from dp_audit.config import run_config_from_dict
    from dp_audit.io import save_npz
    from dp_audit.trainers.base import TRAINERS, default_cache_root, prepare
    from dp_audit.trainers.modeling import build_classifier, encode, subset

    import dp_audit.trainers.registry  # noqa: F401

    run_dir = Path(run_dir)
    out = reference_path(run_dir, index)
    if out.is_file():
        return out
    cfg = run_config_from_dict(manifest["config"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    prep = prepare(cfg, cache_root=default_cache_root(run_dir, cfg), progress=False)
    rng = np.random.default_rng([seed, index])
    private = encode(prep.tokenizer, prep.task.train.texts, prep.task.train.labels, max_length=cfg.data.max_length)
    n_private = len(prep.task.train)
    keep = np.flatnonzero(rng.random(n_private) < 0.5)
    canaries = prep.canaries
    in_mask = rng.random(len(canaries)) < 0.5
    chosen = [c for c, i in zip(canaries, in_mask) if i] * cfg.canaries.repeat
    can_enc = encode(prep.tokenizer, [c.text for c in chosen], [c.label for c in chosen], max_length=cfg.data.max_length)
    part = subset(private, torch.as_tensor(keep))
    train = {k: torch.cat([part[k], can_enc[k]]) for k in part}
    ref_prep = dataclasses.replace(prep, train=train)
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    model = build_classifier(prep.backbone_dir, cfg.model, generator=g)
    result = TRAINERS.get(cfg.trainer)().fit(ref_prep, model, generator=g)
    signals = compute_signals(result.model, prep.tokenizer, [c.text for c in canaries], [c.label for c in canaries],
                              kind="classifier", batch_size=batch_size, progress=False)
    tmp = out.with_suffix(".signals.npz")
    signals.save(tmp)
    from dp_audit.io import load_npz

    arrays = load_npz(tmp)
    tmp.unlink()
    save_npz(out, in_mask=in_mask, **arrays)
    return out


def train_references(run_dir: str | Path, manifest: dict[str, Any], *, n_models: int, seed: int,
                     progress: bool = True, batch_size: int = 64) -> list[Path]:
    """Run (or resume) ``n_models`` reference tasks in this process, with a progress bar."""
    from tqdm.auto import tqdm

    paths = []
    for i in tqdm(range(n_models), desc="reference models", disable=not progress):
        paths.append(reference_task(run_dir, manifest, i, seed=seed, batch_size=batch_size))
    return paths
