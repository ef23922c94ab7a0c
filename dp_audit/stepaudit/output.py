"""The step-audit output directory (run-like, DESIGN.md §3):

- ``trials.npz``: ``scores_d0`` and ``scores_d1`` (float64, one score per trial, in trial order;
  the first ``calibration_per_side`` of each chose the threshold), plus ``scores``/``member``
  (the pooled form that ``dp-audit estimate`` reads); no pickles;
- ``step_audit.json``: :meth:`StepAuditResult.to_dict` (claim, estimates, verdict, timings);
- ``manifest.json``: kind ``step-audit``, the configuration, the seed, the per-step claim, tool
  and library versions and the sha256 of both files; written last, each file atomically.

The three files are written into a temporary sibling of ``out`` that is renamed into place at the
end: ``out`` must be absent or empty, so no file dp-audit did not write is ever replaced, and a
killed step audit leaves no half-written ``out``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import atomic_write_json, load_npz, read_json, save_npz
from dp_audit.manifest import MANIFEST, load_manifest, new_run_id, write_manifest
from dp_audit.rundir import OutputChanged, OutputState, claim_output, install_output
from dp_audit.stepaudit.result import KIND, StepAuditResult

TRIALS = "trials.npz"
RESULT = "step_audit.json"


def check_out(out: str | Path) -> OutputState:
    """``out`` can receive a new audit: absent or an empty directory (a directory holding files,
    e.g. an earlier audit or a user's ``trials.npz``, is refused: nothing is ever overwritten)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    if (out / MANIFEST).exists():
        raise UsageError(f"{out} already holds an audit ({MANIFEST}); choose another --out")
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; choose a new or empty directory")
    return claim_output(out, overwrite=False)


def write_step_audit(res: StepAuditResult, out: str | Path, *, config: Mapping[str, Any] | None = None) -> Path:
    """Write the three files into a temporary sibling and rename it to ``out`` (which must be
    absent or empty: nothing already there is ever overwritten)."""
    out = Path(out)
    state = check_out(out)
    if res.scores_d0 is None or res.scores_d1 is None:
        raise UsageError("this result carries no trial scores (it was read from JSON); nothing to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_files(res, tmp, config, name=out.name)
        install_output(tmp, out, state)
    except OutputChanged:
        raise  # the finished audit stays in tmp, as the message says
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_files(res: StepAuditResult, out: Path, config: Mapping[str, Any] | None, *, name: str) -> None:
    d0 = np.asarray(res.scores_d0, dtype=np.float64)
    d1 = np.asarray(res.scores_d1, dtype=np.float64)
    save_npz(out / TRIALS, scores_d0=d0, scores_d1=d1, scores=np.concatenate([d0, d1]),
             member=np.concatenate([np.zeros(d0.size, dtype=bool), np.ones(d1.size, dtype=bool)]))
    atomic_write_json(out / RESULT, res.to_dict())
    cfg = {"construction": res.construction, "trials": res.trials, "alpha": res.alpha, "delta": res.delta,
           "threshold": res.threshold, "calibration_per_side": res.calibration_trials,
           "construction_info": res.info, **dict(config or {})}
    claim = {"epsilon": res.claim_epsilon, "delta": res.delta, "mu": res.claim_mu, "per": "step",
             "accountant": "gdp" if res.claim_mu is not None else "construction"}
    write_manifest(out, kind=KIND, config=cfg, seeds={"seed": res.seed}, claim=claim, artifacts=[TRIALS, RESULT],
                   run_id=new_run_id(name))


def read_step_audit(path: str | Path) -> StepAuditResult:
    """Read a step-audit directory, verifying every hash (mismatch: IntegrityError, exit 3)."""
    path = Path(path)
    manifest = load_manifest(path)
    if manifest.get("kind") != KIND:
        raise UsageError(f"{path} is not a step-audit directory (manifest kind {manifest.get('kind')!r})")
    data = read_json(path / RESULT, what="step-audit result", integrity=True)
    try:
        res = StepAuditResult.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"{path / RESULT}: malformed step-audit result ({exc})") from None
    z = load_npz(path / TRIALS, integrity=True)
    if "scores_d0" not in z or "scores_d1" not in z:
        raise IntegrityError(f"{path / TRIALS}: missing scores_d0/scores_d1")
    return res.with_scores(z["scores_d0"], z["scores_d1"])


__all__ = ["RESULT", "TRIALS", "check_out", "read_step_audit", "write_step_audit"]
