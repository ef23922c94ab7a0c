"""ROC, AUC and TPR at low FPR with bootstrap confidence intervals."""
from __future__ import annotations
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from dp_audit.io import validate_scores
from dp_audit.records import AttackResult


def _tpr_at(fpr, tpr, x):
    ok = fpr <= x
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_metrics(name, scores, member, *, scores_file, threat_model="black-box", fpr_points=(0.001, 0.01), rng, n_bootstrap=200):
    scores, member = validate_scores(scores, member)
    fpr, tpr, _ = roc_curve(member, scores)
    auc = float(roc_auc_score(member, scores))
    boot_auc, boot_tpr = [], {str(p): [] for p in fpr_points}
    n = scores.size
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        if member[idx].all() or not member[idx].any():
            continue
        f, t, _ = roc_curve(member[idx], scores[idx])
        boot_auc.append(roc_auc_score(member[idx], scores[idx]))
        for p in fpr_points:
            boot_tpr[str(p)].append(_tpr_at(f, t, p))
    grid = np.unique(np.concatenate([np.logspace(-4, 0, 300), [0.0]]))
    keep = np.unique(np.searchsorted(fpr, grid, side="right") - 1).clip(0, fpr.size - 1)
    return AttackResult(name=name, auc=auc, n_members=int(member.sum()), n_nonmembers=int((~member).sum()),
                        scores_file=scores_file, threat_model=threat_model,
                        auc_ci=(float(np.quantile(boot_auc, 0.025)), float(np.quantile(boot_auc, 0.975))),
                        tpr_at_fpr={str(p): _tpr_at(fpr, tpr, p) for p in fpr_points},
                        tpr_at_fpr_ci={k: (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) for k, v in boot_tpr.items()},
                        roc_fpr=fpr[keep].tolist(), roc_tpr=tpr[keep].tolist(),
                        details={"ci": "percentile bootstrap, 95%", "n_bootstrap": n_bootstrap})
