"""Reference (shadow) models for LiRA / RMIA / reference-loss attacks (DESIGN.md §5, §10).

Each reference model is trained by the run's own trainer and config (same backbone, tuning,
epochs, privacy settings) with every canary of the run included independently with
probability 1/2 (so each canary has IN and OUT reference models). The rest of the training data
is the run's whole private split (``private="all"``, the default: the auditor knows D, and the
reference models then differ from the target only in canary membership and their own
randomness) or a random half of it (``private="half"``, the LiRA paper's shadow-model recipe).

Independence from the target: the IN masks come from a generator seeded with
``(REFERENCE_TAG, seed, index)``, a seed sequence that no other seed of the run can reproduce
(``default_rng([s, 0])`` equals ``default_rng(s)``, so a bare ``[seed, index]`` could replay the
canary-membership draws when the audit seed equals the canary seed). The reference models never
see the target's membership decisions: they start from the private split *without* canaries.

A task is a pure function of (run config, seed, index) and writes ``references/ref-XXX.npz``:
the canary signals under that model, its ``in_mask`` (n,), and ``meta_seed``, ``meta_index``,
``meta_digest`` (the run config, the canaries and the options it was trained for). A finished
task whose meta matches is skipped, so an interrupted audit resumes where it stopped; a file left
by a different seed, config or option set is retrained. :func:`train_references` maps
:func:`reference_job` (the JSON-argument form of :func:`reference_task`) over indices with
:func:`dp_audit.scale.run_tasks`: a process pool by default, Ray with ``scale.backend = "ray"``
(docs/scale-out.md). The shared preparation (data, tokenizer, pretrained backbone) is built
once, in the calling process, before any task starts, and each worker process keeps its
:func:`prepare` result for the tasks it runs.

Reference models are the auditor's own, not a release: their DP noise and Poisson batches are
seeded from ``(REFERENCE_TAG, seed, index)`` (``privacy.reproducible_noise``), so the same seeds
give the same files, byte for byte, on any backend and worker count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dp_audit.errors import IntegrityError, UsageError

REF_DIR = "references"
REFERENCE_TAG = 0x72656673  # "refs": domain separation of the reference models' seed sequences
PRIVATE_MODES = ("all", "half")


def reference_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / REF_DIR / f"ref-{index:03d}.npz"


def reference_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([REFERENCE_TAG, int(seed), int(index)])


def reference_digest(manifest: dict[str, Any], canaries: Sequence[Any], *, private: str) -> str:
    from dp_audit.io import canonical_fingerprint

    return canonical_fingerprint({"config": manifest["config"], "private": private, "noise": "seeded-by-index",
                                  "canaries": [[c.id, c.text, c.label] for c in canaries]})


_PREPARED: dict[str, Any] = {}  # per process: config fingerprint -> Prepared (workers run many tasks)


def _prepared(cfg: Any, cache_root: Path, *, progress: bool = False) -> Any:
    from dp_audit.io import canonical_fingerprint
    from dp_audit.trainers.base import prepare

    key = canonical_fingerprint({"config": dataclasses.asdict(cfg), "cache": str(cache_root)})
    if key not in _PREPARED:
        _PREPARED.clear()  # one audit at a time per process: keep memory flat
        _PREPARED[key] = prepare(cfg, cache_root=cache_root, progress=progress)
    return _PREPARED[key]


def _meta_matches(path: Path, *, seed: int, index: int, digest: str) -> bool:
    from dp_audit.io import load_npz

    try:
        z = load_npz(path, integrity=True)
    except IntegrityError:
        return False
    return ("meta_seed" in z and "meta_index" in z and "meta_digest" in z and int(z["meta_seed"]) == seed
            and int(z["meta_index"]) == index and str(z["meta_digest"]) == digest and "in_mask" in z)


def reference_task(run_dir: str | Path, manifest: dict[str, Any], index: int, *, seed: int, batch_size: int = 64,
                   private: str = "all", canaries: Sequence[Any] | None = None) -> Path:
    """Train reference model ``index`` and store the signals of the run's canaries under it.

    ``canaries`` (default: the run's ``canaries.jsonl``) must be the canaries the run's config
    generates: same ids, texts and labels, in the same order (else an IntegrityError).
    """
    import torch

    from dp_audit.attacks.signals import compute_signals
    from dp_audit.canaries import read_canaries
    from dp_audit.config import run_config_from_manifest
    from dp_audit.io import load_npz, save_npz
    from dp_audit.trainers.base import TRAINERS, default_cache_root, new_classifier
    from dp_audit.trainers.modeling import encode, subset

    import dp_audit.trainers.registry  # noqa: F401

    if private not in PRIVATE_MODES:
        raise UsageError(f"reference private data must be one of {', '.join(PRIVATE_MODES)}, got {private!r}")
    run_dir = Path(run_dir)
    if canaries is None:
        canaries = read_canaries(run_dir / "canaries.jsonl")
    canaries = list(canaries)
    digest = reference_digest(manifest, canaries, private=private)
    out = reference_path(run_dir, index)
    if out.is_file() and _meta_matches(out, seed=seed, index=index, digest=digest):
        return out
    cfg = run_config_from_manifest(manifest["config"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    prep = _prepared(cfg, default_cache_root(run_dir, cfg))
    regenerated = [(c.id, c.text, c.label) for c in prep.canaries]
    if regenerated != [(c.id, c.text, c.label) for c in canaries]:
        raise IntegrityError(f"{run_dir / 'canaries.jsonl'} differs from the canaries the run's config generates: "
                             "reference models would train on other texts")
    rng = reference_rng(seed, index)
    in_mask = rng.random(len(canaries)) < 0.5
    n_private = len(prep.task.train)
    keep = np.arange(n_private) if private == "all" else np.flatnonzero(rng.random(n_private) < 0.5)
    def enc(texts, labels):  # a causal LM's batches carry next-token labels (trainers.causal_lm)
        if prep.kind == "causal-lm":
            from dp_audit.trainers.causal_lm import encode_lm

            return encode_lm(prep.tokenizer, list(texts), max_length=cfg.data.max_length)
        return encode(prep.tokenizer, texts, labels, max_length=cfg.data.max_length, layout=prep.layout)

    private_enc = enc(prep.task.train.texts, prep.task.train.labels)
    chosen = [c for c, i in zip(canaries, in_mask) if i] * cfg.canaries.repeat
    part = subset(private_enc, torch.as_tensor(keep))
    if chosen:
        can_enc = enc([c.text for c in chosen], [c.label for c in chosen])
        train = {k: torch.cat([part[k], can_enc[k]]) for k in part}
    else:
        train = part
    ref_prep = dataclasses.replace(prep, train=train)
    g_init = torch.Generator().manual_seed(int(rng.integers(2**31)))
    g_train = torch.Generator().manual_seed(int(rng.integers(2**31)))
    # the auditor's model: noise and batches seeded from this reference's own seed sequence
    ref_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=int(rng.integers(2**31))),
                                  privacy=dataclasses.replace(cfg.privacy, reproducible_noise=True))
    ref_prep = dataclasses.replace(ref_prep, cfg=ref_cfg)
    model = new_classifier(prep, generator=g_init)
    result = TRAINERS.get(cfg.trainer)().fit(ref_prep, model, generator=g_train)
    signals = compute_signals(result.model, prep.tokenizer, [c.text for c in canaries], [c.label for c in canaries],
                              kind=prep.kind, batch_size=batch_size, progress=False)
    tmp = out.parent / f".{out.stem}.signals.tmp.npz"  # never matches ref-*.npz
    signals.save(tmp)
    arrays = load_npz(tmp)
    tmp.unlink()
    save_npz(out, in_mask=in_mask, meta_seed=np.int64(seed), meta_index=np.int64(index),
             meta_digest=np.array(digest), **arrays)
    return out


def reference_job(run_dir: str, manifest: dict[str, Any], index: int, seed: int, batch_size: int,
                  private: str) -> str:
    """:func:`reference_task` with plain-data arguments and result (a scale-out task)."""
    return str(reference_task(run_dir, manifest, index, seed=seed, batch_size=batch_size, private=private))


def train_references(run_dir: str | Path, manifest: dict[str, Any], *, n_models: int, seed: int,
                     progress: bool = True, batch_size: int = 64, private: str = "all",
                     scale: Any = None) -> list[Path]:
    """Run (or resume) ``n_models`` reference tasks on ``scale``'s backend (default: a local process
    pool over every core), with one progress bar."""
    from dp_audit.canaries import read_canaries
    from dp_audit.config import run_config_from_manifest
    from dp_audit.scale import Task, run_tasks
    from dp_audit.trainers.base import default_cache_root

    if n_models < 1:
        raise UsageError(f"need at least one reference model, got {n_models}")
    if private not in PRIVATE_MODES:
        raise UsageError(f"reference private data must be one of {', '.join(PRIVATE_MODES)}, got {private!r}")
    run_dir = Path(run_dir).resolve()
    canaries = read_canaries(run_dir / "canaries.jsonl")
    digest = reference_digest(manifest, canaries, private=private)
    todo = [i for i in range(n_models)
            if not (reference_path(run_dir, i).is_file()
                    and _meta_matches(reference_path(run_dir, i), seed=seed, index=i, digest=digest))]
    if todo:  # the shared preparation once, here: the backbone cache exists before any worker starts
        cfg = run_config_from_manifest(manifest["config"])
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
        # memoised: the serial backend's in-process tasks reuse it instead of preparing again
        _prepared(cfg, default_cache_root(run_dir, cfg), progress=progress)
        (run_dir / REF_DIR).mkdir(exist_ok=True)
    tasks = [Task(key=f"ref-{i:03d}", fn="dp_audit.reference:reference_job",
                  kwargs={"run_dir": str(run_dir), "manifest": manifest, "index": i, "seed": int(seed),
                          "batch_size": int(batch_size), "private": private}) for i in todo]
    run_tasks(tasks, scale=scale, desc="reference models", progress=progress)
    return [reference_path(run_dir, i) for i in range(n_models)]
