"""White-box one-run audit with Dirac gradient canaries (docs/whitebox.md).

Threat model **white-box**: the adversary sees the final weights w_T and the initial ones w_0.
Each Dirac canary i contributed, whenever it was a member and sampled, the per-sample gradient
``C · e_i`` (norm C, one coordinate). Its score is the projection of the weight change on the
canary's descent direction −e_i:

    score_i = ⟨w_T − w_0, −e_i⟩ = w_0[i] − w_T[i]        (higher = more likely member)

(Nasr et al. 2023, "Tight Auditing of Differentially Private Machine Learning", arXiv 2302.07956;
Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run", arXiv 2305.08846).
With plain SGD the coordinate moves by ``−lr/(qn) · (C·K_i + Σ_t σC z_t)``, K_i ~ Bin(T, q) for a
member and 0 for a non-member; with Adam the update is a monotone-ish transform of the same sums.

Validity: the score is a function of the released weights, w_0 (fixed before the membership
draw) and the public canary coordinates; the membership bits are never read. So the one-run
bounds (f-DP, Steinke) hold for it. The scores are written as ``scores/whitebox-dirac.npz`` with
design "one-run". This module reads weight files only; it never imports ``dp_audit.trainers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dp_audit import dirac
from dp_audit.errors import IntegrityError, UsageError

NAME = "whitebox-dirac"
THREAT_MODEL = "white-box"
DESIGN = "one-run"
SCORES_FILE = f"scores/{NAME}.npz"
REFERENCE = ("Nasr et al. 2023, arXiv 2302.07956 (Dirac canaries); Steinke, Nasr & Jagielski 2023, "
             "arXiv 2305.08846 (one-run audit)")


@dataclass(frozen=True)
class DiracScores:
    scores: np.ndarray
    member: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def _tensor(path: Path, name: str) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import safe_open

    if not path.is_file():
        raise IntegrityError(f"{path} missing: the Dirac audit needs it")
    try:
        with safe_open(str(path), framework="np") as fh:
            if name not in fh.keys():
                raise IntegrityError(f"{path}: no tensor {name!r}")
            return np.asarray(fh.get_tensor(name), dtype=np.float64)
    except SafetensorError as exc:
        raise IntegrityError(f"{path}: unreadable safetensors file ({exc})") from None


def dirac_scores(w0: np.ndarray, w_final: np.ndarray, index: np.ndarray) -> np.ndarray:
    """score_i = ⟨w_T − w_0, −e_i⟩ for each flat coordinate ``index[i]`` (higher = member)."""
    if w0.shape != w_final.shape:
        raise IntegrityError(f"w_0 has shape {w0.shape}, the final parameter {w_final.shape}")
    return (w0.reshape(-1) - w_final.reshape(-1))[np.asarray(index, dtype=np.int64)]


def scores_for_run(run_dir: str | Path) -> DiracScores:
    """Dirac scores of a run directory of ``dp-audit train`` with ``canaries.gradient > 0`` (the
    caller has verified the manifest's hashes: record, w_0 and model)."""
    from dp_audit.io import read_json

    run_dir = Path(run_dir)
    rec_path = run_dir / dirac.RECORD
    if not rec_path.is_file():
        raise UsageError(f"{run_dir} has no Dirac gradient canaries (train with canaries.gradient = m)")
    rec = dirac.read_record(read_json(rec_path, what="Dirac canary record", integrity=True), where=str(rec_path))
    w0 = _tensor(run_dir / dirac.W0, "w0")
    if tuple(w0.shape) != rec.shape:
        raise IntegrityError(f"{run_dir / dirac.W0}: w0 has shape {w0.shape}, the record says {rec.shape}")
    if rec.final_file is None:  # DP-SGD: the canary rows are part of the saved model
        w_final = _tensor(run_dir / "model" / "model.safetensors", rec.parameter)
    else:  # DP-Flat: the dedicated audit parameter, saved next to the adapter (hashed)
        w_final = _tensor(run_dir / rec.final_file, rec.final_tensor)
    scores = dirac_scores(w0, w_final, rec.index)
    if not np.isfinite(scores).all():
        raise IntegrityError(f"{run_dir}: non-finite Dirac scores (diverged training?)")
    details = {"design": DESIGN, "parameter": rec.parameter, "canary_norm": rec.norm, "sample_rate": rec.sample_rate,
               "statistic": "<w_T - w_0, -e_i>", "m": rec.m, "reference": REFERENCE,
               "initial_weights": dirac.W0, "final_weights": rec.final_file or "model/model.safetensors"}
    return DiracScores(scores=scores, member=rec.member, details=details)
