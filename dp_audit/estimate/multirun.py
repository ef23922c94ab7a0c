"""Multi-run bounds: one score per training run (or per trial of one step), member = whether that
run included the canary, runs independent (Jagielski et al. 2020, arXiv 2006.07709; Nasr et al.
2021, arXiv 2101.04535; Nasr et al. 2023, arXiv 2302.07956).

A threshold test t gives (FPR, FNR); DP bounds both directions of the likelihood ratio:
TPR <= e^ε FPR + δ and TNR <= e^ε FNR + δ, so ε >= ln((1 − δ − FNR)/FPR) and
ε >= ln((1 − δ − FPR)/FNR). With upper confidence bounds on FPR and FNR this is the
Clopper-Pearson bound; the GDP bound turns the same pair into μ = Φ⁻¹(1 − FPR) − Φ⁻¹(FNR)
(Dong et al. 2022, Eq. 6) and reports the ε at δ of μ-GDP.

Thresholds are indexed by rank in a fixed grid, which keeps the Bonferroni correction exact:
the threshold t_j is the (j+1)-th largest non-member score and the rule is "member iff s > t_j".
Then FPR(t_j) <= U_(j+1), the (j+1)-th smallest of n0 uniforms, so P[FPR(t_j) > CP_upper(j, n0, a)]
<= a exactly (ties only help), and given t_j (a function of the non-members alone) the members
are still independent draws, so the Clopper-Pearson bound on TPR holds conditionally. The
mirrored tests (thresholds at member order statistics) bound FNR the same way. A threshold at
every pooled score with the CP interval of its counts would not have this guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from dp_audit.estimate.candidates import size_grid


def cp_upper(k, n, a) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound of a binomial rate: P[Bin(n, ub) <= k] = a."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        out = stats.beta.ppf(1 - a, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, out)


def cp_lower(k, n, a) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound: P[Bin(n, lb) >= k] = a."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        out = stats.beta.ppf(a, np.maximum(k, 1e-300), n - k + 1)
    return np.where(k <= 0, 0.0, out)


def cp_epsilon(fpr_ub, fnr_ub, delta: float) -> np.ndarray:
    """max(ln((1 − δ − FNR)/FPR), ln((1 − δ − FPR)/FNR)), clamped at 0 (elementwise)."""
    fpr_ub, fnr_ub = np.asarray(fpr_ub, dtype=float), np.asarray(fnr_ub, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.where(1 - delta - fnr_ub > 0, np.log(1 - delta - fnr_ub) - np.log(fpr_ub), 0.0)
        e2 = np.where(1 - delta - fpr_ub > 0, np.log(1 - delta - fpr_ub) - np.log(fnr_ub), 0.0)
    return np.maximum(np.maximum(np.nan_to_num(e1, nan=0.0), np.nan_to_num(e2, nan=0.0)), 0.0)


def gdp_mu_lb(fpr_ub, fnr_ub) -> np.ndarray:
    """μ_LB = Φ⁻¹(1 − FPR_ub) − Φ⁻¹(FNR_ub), clamped at 0 (elementwise)."""
    mu = special.ndtri(1 - np.asarray(fpr_ub, dtype=float)) - special.ndtri(np.asarray(fnr_ub, dtype=float))
    return np.maximum(np.nan_to_num(mu, nan=0.0, posinf=np.inf), 0.0)


@dataclass(frozen=True)
class ThresholdTests:
    """Counts of a family of threshold tests "member iff s > t" (or s >= t for fixed thresholds)."""

    threshold: np.ndarray
    strict: bool
    fp: np.ndarray  # the count whose rate is bounded: rank j for order-statistic tests
    tp: np.ndarray
    n_out: np.ndarray | int  # per test: mirrored tests swap the two groups
    n_in: np.ndarray | int
    direction: np.ndarray  # +1: thresholds at non-member order statistics; -1: at member ones

    def bounds(self, a: float) -> tuple[np.ndarray, np.ndarray]:
        """(FPR_ub, FNR_ub), each at level a/2, for every test (in the original orientation)."""
        fp_rate_ub = cp_upper(self.fp, self.n_out, a / 2)
        miss_ub = 1 - cp_lower(self.tp, self.n_in, a / 2)
        # direction -1 tests were built on (−s, ¬member): their "FPR" is the original FNR
        fpr = np.where(self.direction > 0, fp_rate_ub, miss_ub)
        fnr = np.where(self.direction > 0, miss_ub, fp_rate_ub)
        return fpr, fnr


def _one_direction(scores: np.ndarray, member: np.ndarray, grid: np.ndarray | None):
    s_out = np.sort(scores[~member])[::-1]
    s_in = np.sort(scores[member])
    n_out, n_in = s_out.size, s_in.size
    j = size_grid(n_out - 1, include_zero=True) if grid is None else grid
    j = j[j < n_out]
    t = s_out[j]
    tp = n_in - np.searchsorted(s_in, t, side="right")  # members with s > t
    return t, j, tp, n_out, n_in


def order_statistic_tests(scores: np.ndarray, member: np.ndarray, *, two_sided: bool = True) -> ThresholdTests:
    """The Bonferroni family: j in a geometric grid {0, 1, 2, 3, 4, 6, 8, ...} of ranks, fixed
    before seeing the data (it depends on the group sizes only)."""
    n_out, n_in = int((~member).sum()), int(member.sum())
    t, j, tp, _, _ = _one_direction(scores, member, None)
    parts = [(t, j, tp, np.ones(j.size))]
    if two_sided:
        t2, j2, tn2, _, _ = _one_direction(-scores, ~member, None)
        parts.append((-t2, j2, tn2, -np.ones(j2.size)))
    cat = lambda i: np.concatenate([p[i] for p in parts])  # noqa: E731
    # For direction -1, "fp" is the rank among members (misses) and "tp" counts correct rejections
    # of non-members; ThresholdTests.bounds maps them back.
    fp = cat(1)
    tp = cat(2)
    direction = cat(3)
    n_o = np.where(direction > 0, n_out, n_in)
    n_i = np.where(direction > 0, n_in, n_out)
    return ThresholdTests(threshold=cat(0), strict=True, fp=fp, tp=tp, n_out=n_o, n_in=n_i, direction=direction)


def fixed_threshold_test(scores: np.ndarray, member: np.ndarray, t: float, *, strict: bool = False) -> ThresholdTests:
    """A single threshold chosen without these data: member iff s >= t (or s > t)."""
    guess = scores > t if strict else scores >= t
    return ThresholdTests(threshold=np.array([t]), strict=strict, fp=np.array([int(np.sum(guess & ~member))]),
                          tp=np.array([int(np.sum(guess & member))]), n_out=int((~member).sum()),
                          n_in=int(member.sum()), direction=np.ones(1))
