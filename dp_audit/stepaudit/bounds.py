"""ε lower bounds from the scores of N trials without the canary and N with it.

Two estimators (DESIGN.md §6), both from one threshold test "d1 iff o·s >= t" (o = ±1):

- ``clopper-pearson``: ε_LB = max(ln((1 − δ − FNR_ub)/FPR_ub), ln((1 − δ − FPR_ub)/FNR_ub)), valid
  for any (ε, δ) claim;
- ``gdp``: μ_LB = Φ⁻¹(1 − FPR_ub) − Φ⁻¹(FNR_ub), reported as the ε of μ_LB-GDP at δ; it refutes only
  a μ-GDP claim, so it is counted only when the construction declares one (``claim_mu``).

Both rates are upper-bounded with one-sided Clopper-Pearson at a/2 each
(:mod:`dp_audit.estimate.multirun`). The refutation is "any counted estimator exceeds its
claim", so α is split evenly over the counted estimators (a union bound).

Choosing the threshold is a multiple comparison. Two valid strategies:

- ``calibration`` (default): the first ``calibration_fraction`` of each side's trials (trials are
  i.i.d., so a split by index is a random split) choose, per estimator, the (t, o) with the
  largest bound *computed on the calibration trials themselves*, over a fixed grid of quantiles of
  the pooled calibration scores and both orientations (ranked at a stricter level, see
  ``SELECTION_FACTOR``); the remaining trials are then tested with
  that single rule at the estimator's full share of α. The rule is independent of the test trials.
- ``bonferroni``: all trials, the order-statistic family of :mod:`dp_audit.estimate.multirun`
  (``estimate_epsilon(..., threshold="bonferroni")``, α divided by the family's size), run on the
  scores and on their negation (the statistic's sign is not assumed), each at half the α.

Never: the best threshold of the same trials reported at α (a null gives ε_LB > 0 often).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import special

from dp_audit.errors import UsageError
from dp_audit.estimate import MU_GDP_ONLY, estimate_epsilon, multirun
from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.records import EpsilonEstimate

STRATEGIES = ("calibration", "bonferroni")
METHODS = ("clopper-pearson", "gdp")
QUANTILE_LEVELS = 400
# The calibration step ranks rules by their bound on the calibration trials at a stricter level
# (α·factor): it prefers thresholds that are well estimated to ones that look good by chance.
# Any rule chosen from the calibration trials alone keeps the test valid; the factors were
# picked on simulated Gaussian and Laplace scores (docs/awp-leak.md: fewer poor seeds).
SELECTION_FACTOR = {"clopper-pearson": 1e-2, "gdp": 1e-4}


@dataclass(frozen=True)
class Rule:
    """"d1 iff orientation·score >= threshold"."""

    threshold: float
    orientation: int


def quantile_grid(pooled: np.ndarray, *, per_side: int, levels: int = QUANTILE_LEVELS) -> np.ndarray:
    """Thresholds at a fixed grid of quantile levels (logit-spaced, denser in both tails, from
    1/(2n) to 1 − 1/(2n)) of the pooled calibration scores."""
    lo = 0.5 / max(per_side, 1)
    q = special.expit(np.linspace(special.logit(lo), special.logit(1 - lo), levels))
    return np.unique(np.quantile(pooled, q))


def _value(method: str, fpr_ub: np.ndarray, fnr_ub: np.ndarray, delta: float) -> np.ndarray:
    if method == "clopper-pearson":
        return multirun.cp_epsilon(fpr_ub, fnr_ub, delta)
    return multirun.gdp_mu_lb(fpr_ub, fnr_ub)  # monotone in ε: select on μ


def select_rule(s0: np.ndarray, s1: np.ndarray, *, method: str, alpha: float, delta: float) -> Rule:
    """The calibration step: the rule with the largest bound on these (calibration) trials."""
    n0, n1 = s0.size, s1.size
    grid = quantile_grid(np.concatenate([s0, s1]), per_side=min(n0, n1))
    best = (-np.inf, Rule(float(grid[0]), 1))
    for o in (1, -1):
        a0, a1, t = np.sort(o * s0), np.sort(o * s1), o * grid
        fp = n0 - np.searchsorted(a0, t, side="left")  # d0 trials with o·s >= t
        tp = n1 - np.searchsorted(a1, t, side="left")
        fpr_ub = multirun.cp_upper(fp, n0, alpha / 2)
        fnr_ub = multirun.cp_upper(n1 - tp, n1, alpha / 2)
        vals = _value(method, fpr_ub, fnr_ub, delta)
        i = int(np.argmax(vals))
        if vals[i] > best[0]:
            best = (float(vals[i]), Rule(float(t[i]), o))
    return best[1]


def rule_bound(s0: np.ndarray, s1: np.ndarray, rule: Rule, *, method: str, alpha: float,
               delta: float) -> tuple[float, dict]:
    """ε_LB of one fixed rule on (test) trials, at confidence 1 − alpha."""
    scores = rule.orientation * np.concatenate([s0, s1])
    member = np.concatenate([np.zeros(s0.size, dtype=bool), np.ones(s1.size, dtype=bool)])
    tests = multirun.fixed_threshold_test(scores, member, rule.threshold, strict=False)
    fpr_ub, fnr_ub = (float(x[0]) for x in tests.bounds(alpha))
    counts = {"fp": int(tests.fp[0]), "tp": int(tests.tp[0]), "n_d0": int(s0.size), "n_d1": int(s1.size),
              "fpr_ub": fpr_ub, "fnr_ub": fnr_ub}
    if method == "clopper-pearson":
        return float(multirun.cp_epsilon(fpr_ub, fnr_ub, delta)), counts
    mu = float(multirun.gdp_mu_lb(fpr_ub, fnr_ub))
    counts["mu_lb"] = mu
    return (gdp_epsilon(delta, mu) if mu > 0 else 0.0), counts


def bound(s0: np.ndarray, s1: np.ndarray, *, method: str, alpha: float, delta: float, threshold: str,
          calibration: int) -> EpsilonEstimate:
    """One estimator's bound at confidence 1 − alpha (its share of the audit's α)."""
    if method not in METHODS:
        raise UsageError(f"unknown step-audit estimator {method!r}; known: {', '.join(METHODS)}")
    if threshold == "calibration":
        if not 0 < calibration < min(s0.size, s1.size):
            raise UsageError(f"calibration split of {calibration} trials leaves no test trials")
        rule = select_rule(s0[:calibration], s1[:calibration], method=method,
                           alpha=alpha * SELECTION_FACTOR[method], delta=delta)
        eps, counts = rule_bound(s0[calibration:], s1[calibration:], rule, method=method, alpha=alpha, delta=delta)
        details = {"rule": "d1 iff orientation*score >= threshold", "threshold_value": rule.threshold,
                   "orientation": rule.orientation, "calibration_trials_per_side": calibration,
                   "quantile_levels": QUANTILE_LEVELS, "selection_alpha": alpha * SELECTION_FACTOR[method]}
        if "mu_lb" in counts:
            details["mu_lb"] = counts["mu_lb"]
        if method == "gdp":
            # the ε of μ_LB-GDP: it refutes a μ-GDP claim, but it is not an ε lower bound of a step
            # that is not μ-GDP (randomized response at ε = 4 gets ≈ 25), as in estimate_epsilon
            details["validity"] = MU_GDP_ONLY
        return EpsilonEstimate(method=method, epsilon_lb=eps, alpha=alpha, delta=delta,
                               m=int(s0.size + s1.size - 2 * calibration), threshold="calibration",
                               threat_model="step-level", counts=counts, details=details)
    if threshold == "bonferroni":
        # estimate_epsilon's family reads "higher = d1"; the statistic's sign is not assumed, so
        # both orientations are tried, each at half the estimator's α
        member = np.concatenate([np.zeros(s0.size, dtype=bool), np.ones(s1.size, dtype=bool)])
        best = None
        for o in (1, -1):
            est = estimate_epsilon(o * np.concatenate([s0, s1]), member, method=method, alpha=alpha / 2, delta=delta,
                                   threshold="bonferroni", threat_model="step-level", rng=np.random.default_rng(0))
            if best is None or est.epsilon_lb > best[0].epsilon_lb:
                best = (est, o)
        est, o = best
        return dataclasses.replace(est, alpha=alpha, details={**est.details, "orientation": o,
                                                                "orientations": 2, "alpha_per_orientation": alpha / 2})
    raise UsageError(f"unknown threshold strategy {threshold!r}; known: {', '.join(STRATEGIES)}")


def mu_of(est: EpsilonEstimate) -> float | None:
    """μ_LB of a ``gdp`` estimate (None for other methods)."""
    if est.method != "gdp":
        return None
    mu = est.details.get("mu_lb")
    return float(mu) if mu is not None else None


__all__ = ["METHODS", "Rule", "STRATEGIES", "bound", "mu_of", "quantile_grid", "rule_bound", "select_rule"]
