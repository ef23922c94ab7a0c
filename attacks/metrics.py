"""Attack metrics: ROC, AUC and TPR at low FPR with confidence intervals (DESIGN.md §0, §5).

- ROC and AUC from ``sklearn.metrics.roc_curve`` / ``roc_auc_score``.
- TPR at FPR x: the largest TPR over ROC points with FPR ≤ x (the best threshold that keeps the
  false-positive rate at most x; Carlini et al. 2022 report this).
- Confidence intervals (95% by default): a stratified percentile bootstrap (members and
  non-members resampled separately, so every replicate has both) for the AUC and, by default,
  for TPR@FPR. ``tpr_ci="clopper-pearson"`` instead gives the exact binomial interval of the
  TPR at the threshold chosen on the full data (it ignores the threshold's own uncertainty).
  ``details["ci"]`` records which one was used.
- The ROC arrays stored in audit.json are downsampled to at most ``max_roc_points`` points on a
  log-spaced FPR grid (from 1/n_nonmembers to 1) so the low-FPR region keeps its detail.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import auc as roc_area, roc_auc_score, roc_curve

from dp_audit.errors import UsageError
from dp_audit.io import validate_scores
from dp_audit.records import THREAT_MODELS, AttackResult


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, x: float) -> float:
    ok = fpr <= x + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, *, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` ROC points: for each FPR on a log grid, the ROC point with the largest
    FPR ≤ it (so the staircase's upper-left corners at low FPR are kept), plus both ends."""
    if fpr.size <= max_points:
        return fpr, tpr
    positive = fpr[fpr > 0]
    lo = positive.min() if positive.size else 1e-6
    grid = np.concatenate([[0.0], np.geomspace(lo, 1.0, max_points - 2)])
    idx = np.searchsorted(fpr, grid, side="right") - 1
    idx = np.unique(np.concatenate([[0], idx.clip(0, fpr.size - 1), [fpr.size - 1]]))
    if idx.size > max_points:  # pragma: no cover - guarded by the grid size
        idx = idx[np.linspace(0, idx.size - 1, max_points).round().astype(int)]
    return fpr[idx], tpr[idx]


def _fpr_key(x: float) -> str:
    return str(float(x))  # "0.001", "0.01": the keys of audit.json


def attack_metrics(
    name: str,
    scores: Sequence[float] | np.ndarray,
    member: Sequence[bool] | np.ndarray,
    *,
    scores_file: str,
    threat_model: str = "black-box",
    fpr_points: Sequence[float] = (0.001, 0.01),
    rng: np.random.Generator,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    tpr_ci: str = "bootstrap",
    max_roc_points: int = 400,
) -> AttackResult:
    """Metrics of one attack on one score set (higher score = more likely member)."""
    scores, member = validate_scores(scores, member, source=scores_file)
    if threat_model not in THREAT_MODELS:
        raise UsageError(f"unknown threat model {threat_model!r}; known: {', '.join(THREAT_MODELS)}")
    if member.all() or not member.any():
        raise UsageError(f"{scores_file}: need both members and non-members to compute a ROC")
    if tpr_ci not in ("bootstrap", "clopper-pearson"):
        raise UsageError(f"tpr_ci must be 'bootstrap' or 'clopper-pearson', got {tpr_ci!r}")
    if not 0 < confidence < 1 or n_bootstrap < 0:
        raise UsageError("need 0 < confidence < 1 and n_bootstrap >= 0")
    fpr, tpr, thresholds = roc_curve(member, scores)
    auc = float(roc_auc_score(member, scores))
    points = [float(x) for x in fpr_points]
    tprs = {_fpr_key(x): tpr_at_fpr(fpr, tpr, x) for x in points}
    q = ((1 - confidence) / 2, 1 - (1 - confidence) / 2)

    pos, neg = np.flatnonzero(member), np.flatnonzero(~member)
    boot_auc, boot_tpr = [], {k: [] for k in tprs}
    for _ in range(n_bootstrap):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        m_b, s_b = member[idx], scores[idx]
        f_b, t_b, _ = roc_curve(m_b, s_b)
        # the area under this ROC is roc_auc_score(m_b, s_b) exactly, without a second roc_curve
        # and sklearn's input validation (which took 2/3 of an LM audit's attack time)
        boot_auc.append(roc_area(f_b, t_b))
        for x, key in zip(points, tprs):
            boot_tpr[key].append(tpr_at_fpr(f_b, t_b, x))
    auc_ci = (float(np.quantile(boot_auc, q[0])), float(np.quantile(boot_auc, q[1]))) if boot_auc else None
    if tpr_ci == "bootstrap":
        tpr_cis = {k: (float(np.quantile(v, q[0])), float(np.quantile(v, q[1]))) for k, v in boot_tpr.items() if v}
        ci_note = f"stratified percentile bootstrap ({n_bootstrap} replicates) for AUC and TPR@FPR"
    else:
        tpr_cis = {}
        for key in tprs:
            k_true = int(round(tprs[key] * pos.size))
            ci = binomtest(k_true, pos.size).proportion_ci(confidence_level=confidence, method="exact")
            tpr_cis[key] = (float(ci.low), float(ci.high))
        ci_note = (f"stratified percentile bootstrap ({n_bootstrap} replicates) for AUC; Clopper-Pearson for "
                   "TPR@FPR at the full-data threshold")
    f_ds, t_ds = downsample_roc(fpr, tpr, max_points=max_roc_points)
    return AttackResult(
        name=name, auc=auc, n_members=int(pos.size), n_nonmembers=int(neg.size), scores_file=scores_file,
        threat_model=threat_model, auc_ci=auc_ci, tpr_at_fpr=tprs, tpr_at_fpr_ci=tpr_cis,
        roc_fpr=[float(v) for v in f_ds], roc_tpr=[float(v) for v in t_ds],
        details={"ci": ci_note, "confidence": confidence, "n_bootstrap": n_bootstrap,
                 "roc_points": int(fpr.size), "roc_points_stored": int(f_ds.size),
                 "min_resolvable_fpr": 1.0 / neg.size},
    )
