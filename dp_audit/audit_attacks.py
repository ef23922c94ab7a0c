"""The attack stage of ``dp-audit run`` (DESIGN.md §5): which attacks run, the reference models
they need, their scores (``scores/<attack>.npz``) and metrics. Called from
:func:`dp_audit.audit.run_audit`.

- ``attacks = ["all"]`` selects every registered attack that applies to the model kind and to
  what is available: reference attacks (``ref-loss``, ``lira-offline``, ``rmia``; ``lira-online``
  with at least 2 reference models) when ``reference_models > 0``, ``exposure`` when the run
  directory has candidate secrets (``candidates.txt``). Names may be mixed with ``"all"``.
- An explicitly named attack that cannot run is a one-line UsageError before anything is trained.
- Reference models (``reference_models`` > 0) are trained for dp-audit run directories only, by
  the run's own trainer (:mod:`dp_audit.reference`, resumable); their signals are cached in
  ``references/ref-XXX.npz`` and recorded in the manifest.
- The exposure attack's entry carries ``details.bound = "exposure"``: the gate then adds the
  Secret Sharer bound P[exposure >= k] <= e^ε 2^(-k) + δ (``dp_audit.attacks.exposure``) as one
  more test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dp_audit.errors import UsageError

ALL = "all"
CANDIDATES = "candidates.txt"
# attack names handled by other stages of run_audit (not in the ATTACKS registry): passed through
EXTERNAL_ATTACKS = ("landscape", "whitebox-dirac", "extraction")  # extraction: dp_audit.audit_secrets


def _registry():
    from dp_audit.attacks.base import ATTACKS

    return ATTACKS


AUTO = "auto"


def default_attacks(kind: str) -> tuple[str, ...]:
    """What ``attacks = ["auto"]`` (the default) runs for a model kind: the loss attack for a
    classifier; for a causal LM every attack that applies (``"all"``): loss, zlib, min-k%, min-k%++,
    exposure when candidates exist, extraction when the canaries are prefix + secret, and the
    reference attacks when reference_models > 0. Leakage of a language model is about secrets it
    completes, which the loss attack alone does not measure (issue 16)."""
    return (ALL,) if kind == "causal-lm" else ("loss",)


def resolve_attacks(requested: Sequence[str], *, kind: str, n_references: int, has_candidates: bool,
                    source: str) -> tuple[str, ...]:
    """The attack names to run, in registry order for ``"all"`` (see the module docstring)."""
    attacks = _registry()
    out: list[str] = []
    for name in requested:
        if name == ALL:
            for n in attacks:
                if n not in out and _available(n, kind=kind, n_references=n_references,
                                               has_candidates=has_candidates):
                    out.append(n)
            continue
        if name in EXTERNAL_ATTACKS:
            if name not in out:
                out.append(name)
            continue
        cls = attacks.get(name)  # UsageError naming the known attacks
        if kind not in cls.kinds:
            raise UsageError(f"attack {name!r} applies to {', '.join(cls.kinds)} models; this model is a {kind}")
        if cls.needs_reference and n_references == 0:
            if source == "external":
                raise UsageError(f"attack {name!r} needs reference models, which dp-audit trains only for run "
                                 "directories of dp-audit train (not for --model checkpoints)")
            raise UsageError(f"attack {name!r} needs reference models; set reference_models > 0 "
                             "(e.g. --set reference_models=8)")
        if cls.needs_reference == "online" and n_references < 2:
            raise UsageError(f"attack {name!r} needs reference models that trained on each canary and models "
                             f"that did not: set reference_models >= 2 (got {n_references})")
        if "candidate_loss" in cls.requires and not has_candidates:
            raise UsageError(f"attack {name!r} needs candidate secrets: pass --candidates FILE (one candidate "
                             "text a line, drawn like the secrets)")
        if name not in out:
            out.append(name)
    if source == "external" and n_references:
        raise UsageError("reference_models > 0 needs a run directory of dp-audit train: the reference models "
                         "are trained with the run's own trainer and config")
    if not out:
        raise UsageError("no attack to run: list attacks in the audit config (or \"all\")")
    return tuple(out)


def _available(name: str, *, kind: str, n_references: int, has_candidates: bool) -> bool:
    if name in EXTERNAL_ATTACKS:
        return False  # another stage's attack: selected by name only
    cls = _registry().get(name)
    if kind not in cls.kinds:
        return False
    if cls.needs_reference and n_references == 0:
        return False
    if cls.needs_reference == "online" and n_references < 2:
        return False
    if "candidate_loss" in cls.requires and not has_candidates:
        return False
    return True


def needs_references(names: Sequence[str]) -> bool:
    attacks = _registry()
    return any(n in attacks and attacks.get(n).needs_reference for n in names)


def read_candidates(path: str | Path) -> list[str]:
    """A candidates file: one candidate text a line (blank lines ignored). Lines are kept as they
    are, spaces included: candidates must be drawn exactly like the canaries' texts (a template
    " my pin is {secret}" stripped to "my pin is ..." would shift every candidate's loss and break
    the exchangeability the exposure bound rests on)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"candidates file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read candidates file {path}: {exc}") from None
    cands = [ln for ln in lines if ln.strip()]
    if not cands:
        raise UsageError(f"{path}: no candidate texts")
    return cands


def run_candidates(run_dir: Path) -> list[str] | None:
    path = Path(run_dir) / CANDIDATES
    return read_candidates(path) if path.is_file() else None


def reference_seed(cfg: Any) -> int:
    return int(cfg.seed)


def build_references(target: Any, cfg: Any, *, progress: bool) -> tuple[Any, dict[str, Any], list[str]]:
    """Train (or resume) the reference models of a dp-audit run; return their signals, the
    ``references`` block of audit.json and the artifact paths to record."""
    from dp_audit.attacks.signals import ReferenceSignals
    from dp_audit.reference import REF_DIR, train_references

    seed = reference_seed(cfg)
    paths = train_references(target.run_dir, target.manifest, n_models=cfg.reference_models, seed=seed,
                             progress=progress, batch_size=cfg.batch_size, private=cfg.reference_private,
                             scale=cfg.scale)
    ref = ReferenceSignals.load_files(paths, integrity=True)
    rel = [p.relative_to(target.run_dir).as_posix() for p in paths]
    info = {"n_models": ref.n_models, "seed": seed, "private": cfg.reference_private,
            "trainer": target.manifest.get("config", {}).get("trainer"), "dir": REF_DIR, "files": rel,
            "in_fraction": float(ref.in_mask.mean()),
            "in_per_canary": {"min": int(ref.in_mask.sum(axis=0).min()), "max": int(ref.in_mask.sum(axis=0).max())}}
    return ref, info, rel


def run_attacks(names: Sequence[str], signals: Any, reference: Any, member: np.ndarray, *, run_dir: Path,
                rng: np.random.Generator, threat_model: str = "black-box", n_bootstrap: int = 200,
                ) -> tuple[list[Any], list[str]]:
    """Score every registered attack in ``names``; write ``scores/<attack>.npz``; return the
    :class:`~dp_audit.records.AttackResult` list and the written paths."""
    from dp_audit.attacks.base import make_attack
    from dp_audit.attacks.metrics import attack_metrics
    from dp_audit.io import save_npz

    attacks_reg = _registry()
    results, written = [], []
    for name in names:
        if name not in attacks_reg or name in EXTERNAL_ATTACKS:
            continue  # handled by another stage of run_audit
        attack = make_attack(name)
        fitted = attack.fit(reference if attack.needs_reference else None)
        scores = np.asarray(fitted.score_samples(signals), dtype=float)
        rel = f"scores/{name}.npz"
        save_npz(Path(run_dir) / rel, scores=scores, member=member)
        written.append(rel)
        res = attack_metrics(name, scores, member, scores_file=rel, rng=rng, threat_model=threat_model,
                             n_bootstrap=n_bootstrap)
        extra: dict[str, Any] = {"needs_reference": attack.needs_reference or None}
        if attack.needs_reference:
            extra["reference_models"] = reference.n_models
        if getattr(fitted, "global_variance_", None) is not None:
            extra["global_variance"] = bool(fitted.global_variance_)
        if "candidate_loss" in attack.requires:
            extra.update({"bound": "exposure", "n_candidates": int(signals.candidate_loss.shape[1]),
                          "max_exposure": float(np.log2(signals.candidate_loss.shape[1] + 1))})
        results.append(dataclasses.replace(res, details={**res.details, **extra}))
    return results, written


def run_dirac_attack(run_dir: Path, *, rng: np.random.Generator, n_bootstrap: int = 200) -> tuple[Any, str]:
    """The white-box Dirac gradient-canary attack of a run trained with ``canaries.gradient``
    (:mod:`dp_audit.attacks.dirac`): write ``scores/whitebox-dirac.npz`` and return its
    AttackResult (threat model white-box, design one-run) and the written path."""
    from dp_audit.attacks.dirac import NAME, SCORES_FILE, THREAT_MODEL, scores_for_run
    from dp_audit.attacks.metrics import attack_metrics
    from dp_audit.io import save_npz

    res = scores_for_run(run_dir)
    save_npz(Path(run_dir) / SCORES_FILE, scores=res.scores, member=res.member)
    out = attack_metrics(NAME, res.scores, res.member, scores_file=SCORES_FILE, rng=rng, threat_model=THREAT_MODEL,
                         n_bootstrap=n_bootstrap)
    return dataclasses.replace(out, details={**out.details, **res.details}), SCORES_FILE
