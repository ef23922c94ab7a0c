"""One small estimator class per method, registered by name (DESIGN.md §6).

Every estimator takes (scores, member) with higher score = more likely member and a threshold
strategy, and returns the pieces of an :class:`~dp_audit.records.EpsilonEstimate`:

- ``bonferroni`` (default): every rule of a candidate set that depends only on the data's size is
  tested at α/K, K = the size of that set; the largest bound is reported. Valid by a union bound.
- ``heldout``: a random fraction of the scores (seeded ``rng``) picks the rule; the rest is
  tested with that one rule at the full α. Valid because the rule is independent of the test half
  (for one-run audits: conditional on the selection half's membership, the mechanism is still
  (ε, δ)-DP in the other half's canaries).
- ``fixed``: the caller's rule (``fixed_k`` or ``fixed_threshold``), tested at α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dp_audit.errors import UsageError
from dp_audit.estimate import multirun, onerun
from dp_audit.estimate.candidates import RankedCanaries, counts_at_thresholds, one_run_grid
from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.registry import Registry

STRATEGIES = ("bonferroni", "heldout", "fixed")


@dataclass(frozen=True)
class Options:
    alpha: float
    delta: float
    threshold: str = "bonferroni"
    fixed_k: Any = None
    fixed_threshold: Any = None
    heldout_fraction: float = 0.5
    sided: str = "two-sided"
    fdp_null: str = "eps-delta"


@dataclass
class Result:
    epsilon: float
    r: int | None = None
    v: int | None = None
    m: int | None = None  # the number of scores the final test used (heldout: the test half)
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Estimator:
    """Base: ``name``, ``is_bound``, ``design`` ('one-run' or 'multi-run') and ``estimate``."""

    name = ""
    is_bound = True
    design = "one-run"
    reference = ""

    def estimate(self, scores: np.ndarray, member: np.ndarray, opts: Options, rng: np.random.Generator) -> Result:
        raise NotImplementedError


ESTIMATORS: Registry[Estimator] = Registry("estimator")


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise UsageError(f"heldout_fraction must be in (0, 1), got {fraction}")
    perm = rng.permutation(n)
    n_a = min(max(int(round(fraction * n)), 1), n - 1)
    return perm[:n_a], perm[n_a:]


# ---------------------------------------------------------------------------------------------
# one run


class OneRunEstimator(Estimator):
    """Guess rules (k+, k−) on m canaries with Bernoulli(1/2) membership, one training run."""

    design = "one-run"
    bound: Callable[..., float]
    rejects: Callable[..., bool]

    def _bound(self, m: int, r: int, v: int, alpha: float, delta: float) -> float:
        return type(self).bound(m=m, r=r, v=v, alpha=alpha, delta=delta)

    def _rejects(self, eps: float, m: int, r: int, v: int, alpha: float, delta: float) -> bool:
        return type(self).rejects(eps, m=m, r=r, v=v, alpha=alpha, delta=delta)

    def _best(self, ranked: RankedCanaries, cands, alpha: float, delta: float):
        """Largest bound over the candidates; candidates that cannot beat the current best
        (they do not reject (best ε, δ)) are skipped without a search: same result, faster."""
        m = ranked.m
        rows = [(c, *ranked.counts(*c)) for c in cands]
        rows.sort(key=lambda t: -(t[2] / t[1]) if t[1] else 0.0)  # most precise first
        best = (0.0, rows[0])
        for row in rows:
            _, r, v = row
            if r == 0 or 2 * v <= r:
                continue  # no better than a coin: p >= 1/2 > α at ε = 0
            if best[0] > 0 and not self._rejects(best[0], m, r, v, alpha, delta):
                continue
            eps = self._bound(m, r, v, alpha, delta)
            if eps > best[0]:
                best = (eps, row)
        return best

    def estimate(self, scores, member, opts, rng):
        m = scores.size
        if opts.threshold == "fixed":
            return self._fixed(scores, member, opts, rng)
        if opts.threshold == "bonferroni":
            ranked = RankedCanaries.build(scores, member, rng)
            cands = one_run_grid(m, sided=opts.sided)
            level = opts.alpha / len(cands)
            eps, ((kp, km), r, v) = self._best(ranked, cands, level, opts.delta)
            return Result(eps, r=r, v=v, m=m,
                          counts={"k_plus": kp, "k_minus": km, "n_members": int(member.sum())},
                          details={"candidates": len(cands), "alpha_per_candidate": level, "sided": opts.sided})
        if opts.threshold == "heldout":
            a, b = _split(m, opts.heldout_fraction, rng)
            ranked = RankedCanaries.build(scores[a], member[a], rng)
            cands = one_run_grid(a.size, sided=opts.sided)
            _, ((kp, km), _, _) = self._best(ranked, cands, opts.alpha, opts.delta)
            t_plus, t_minus = ranked.thresholds(kp, km)
            r, v, kp_b, km_b = counts_at_thresholds(scores[b], member[b], t_plus, t_minus)
            eps = self._bound(b.size, r, v, opts.alpha, opts.delta)
            return Result(eps, r=r, v=v, m=int(b.size),
                          counts={"k_plus": kp_b, "k_minus": km_b, "n_members": int(member[b].sum())},
                          details={"selection_size": int(a.size), "test_size": int(b.size),
                                   "threshold_plus": t_plus, "threshold_minus": t_minus})
        raise UsageError(f"unknown threshold strategy {opts.threshold!r}; known: {', '.join(STRATEGIES)}")

    def _fixed(self, scores, member, opts, rng):
        m = scores.size
        if opts.fixed_k is not None:
            kp, km = _pair(opts.fixed_k, "fixed_k")
            ranked = RankedCanaries.build(scores, member, rng)
            r, v = ranked.counts(int(kp), int(km))
            details = {}
        elif opts.fixed_threshold is not None:
            t_plus, t_minus = _pair(opts.fixed_threshold, "fixed_threshold")
            r, v, kp, km = counts_at_thresholds(scores, member, t_plus, t_minus)
            details = {"threshold_plus": t_plus, "threshold_minus": t_minus}
        else:
            raise UsageError("threshold 'fixed' needs fixed_k=(k_plus, k_minus) or fixed_threshold")
        eps = self._bound(m, r, v, opts.alpha, opts.delta)
        return Result(eps, r=r, v=v, m=m, counts={"k_plus": int(kp), "k_minus": int(km),
                                                  "n_members": int(member.sum())}, details=details)


def _pair(value, what: str):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise UsageError(f"{what} must be a number or a pair (plus, minus), got {value!r}")
        return value[0], value[1]
    return value, (0 if what == "fixed_k" else None)


@ESTIMATORS.register("steinke")
class Steinke(OneRunEstimator):
    name = "steinke"
    reference = "Steinke, Nasr & Jagielski 2023, arXiv 2305.08846"
    bound = staticmethod(onerun.steinke_epsilon)
    rejects = staticmethod(onerun.steinke_rejects)


@ESTIMATORS.register("fdp")
class FDP(OneRunEstimator):
    """One-run f-DP. ``null="eps-delta"`` (default) tests the (ε, δ)-DP trade-off curve, valid for
    any mechanism; ``null="gdp"`` tests μ-GDP (valid only for Gaussian-shaped mechanisms)."""

    name = "fdp"
    reference = "Mahloujifar, Melis & Chaudhuri 2024, arXiv 2410.22235"

    def __init__(self, null: str = "eps-delta") -> None:
        onerun._check_null(null)
        self.null = null

    def _bound(self, m, r, v, alpha, delta):
        return onerun.fdp_epsilon(m=m, r=r, v=v, alpha=alpha, delta=delta, null=self.null)

    def _rejects(self, eps, m, r, v, alpha, delta):
        return onerun.fdp_rejects(eps, m=m, r=r, v=v, alpha=alpha, delta=delta, null=self.null)


# ---------------------------------------------------------------------------------------------
# many runs


class MultiRunEstimator(Estimator):
    """One score per independent run; member = the run's data set included the canary."""

    design = "multi-run"

    def value(self, fpr_ub: np.ndarray, fnr_ub: np.ndarray, delta: float) -> np.ndarray:
        raise NotImplementedError

    def _evaluate(self, tests: multirun.ThresholdTests, level: float, delta: float):
        fpr, fnr = tests.bounds(level)
        vals = self.value(fpr, fnr, delta)
        i = int(np.argmax(vals))
        return float(vals[i]), i, fpr, fnr

    def estimate(self, scores, member, opts, rng):
        n_in, n_out = int(member.sum()), int((~member).sum())
        if n_in == 0 or n_out == 0:
            raise UsageError(f"{self.name} needs runs with and without the canary")
        two = opts.sided == "two-sided"
        if opts.threshold == "fixed":
            if opts.fixed_threshold is None:
                raise UsageError("threshold 'fixed' needs fixed_threshold (member iff score >= t)")
            tests, level, details = multirun.fixed_threshold_test(scores, member, float(opts.fixed_threshold)), opts.alpha, {}
            used = scores.size
        elif opts.threshold == "bonferroni":
            tests = multirun.order_statistic_tests(scores, member, two_sided=two)
            level = opts.alpha / tests.fp.size
            details = {"candidates": int(tests.fp.size), "alpha_per_candidate": level}
            used = scores.size
        elif opts.threshold == "heldout":
            a, b = _split(scores.size, opts.heldout_fraction, rng)
            if member[a].all() or (~member[a]).all() or member[b].all() or (~member[b]).all():
                raise UsageError(f"{self.name} heldout: a half has no runs with (or without) the canary")
            sel = multirun.order_statistic_tests(scores[a], member[a], two_sided=two)
            _, i, _, _ = self._evaluate(sel, opts.alpha, opts.delta)
            t, direction = float(sel.threshold[i]), float(sel.direction[i])
            tests = multirun.fixed_threshold_test(scores[b], member[b], t, strict=direction > 0)
            level, used = opts.alpha, int(b.size)
            details = {"selection_size": int(a.size), "test_size": int(b.size)}
        else:
            raise UsageError(f"unknown threshold strategy {opts.threshold!r}; known: {', '.join(STRATEGIES)}")
        eps, i, fpr, fnr = self._evaluate(tests, level, opts.delta)
        d = float(tests.direction[i])
        counts = {"n_members": int(_at(tests.n_in if d > 0 else tests.n_out, i)),
                  "n_nonmembers": int(_at(tests.n_out if d > 0 else tests.n_in, i)),
                  "fpr_ub": float(fpr[i]), "fnr_ub": float(fnr[i])}
        details.update({"threshold_value": float(tests.threshold[i]),
                        "rule": ("score > t" if tests.strict else "score >= t") if d > 0 else "score >= t"})
        details.update(self.extra(fpr[i], fnr[i]))
        return Result(eps, m=used, counts=counts, details=details)

    def extra(self, fpr: float, fnr: float) -> dict[str, Any]:
        return {}


def _at(x, i):
    return x[i] if np.ndim(x) else x


@ESTIMATORS.register("clopper-pearson")
class ClopperPearson(MultiRunEstimator):
    name = "clopper-pearson"
    reference = "Jagielski et al. 2020 (arXiv 2006.07709); Nasr et al. 2021 (arXiv 2101.04535)"

    def value(self, fpr_ub, fnr_ub, delta):
        return multirun.cp_epsilon(fpr_ub, fnr_ub, delta)


@ESTIMATORS.register("gdp")
class GDP(MultiRunEstimator):
    name = "gdp"
    reference = "Nasr et al. 2023 (arXiv 2302.07956); Dong, Roth & Su 2022 (arXiv 1905.02383)"

    def value(self, fpr_ub, fnr_ub, delta):
        mus = multirun.gdp_mu_lb(fpr_ub, fnr_ub)
        # ε is increasing in μ: convert the best μ only
        out = np.zeros_like(mus)
        i = int(np.argmax(mus))
        out[i] = gdp_epsilon(delta, float(mus[i])) if mus[i] > 0 else 0.0
        return out

    def extra(self, fpr, fnr):
        return {"mu_lb": float(multirun.gdp_mu_lb(fpr, fnr))}


# ---------------------------------------------------------------------------------------------
# point estimate


@ESTIMATORS.register("raw")
class Raw(Estimator):
    """ln(TPR/FPR) of the best "top-k" rule (k in the size grid, at least one false positive),
    or of the caller's fixed rule. An estimate, not a bound: never used by the gate."""

    name = "raw"
    is_bound = False
    design = "either"
    reference = "point estimate ln(TPR/FPR); no confidence"

    def estimate(self, scores, member, opts, rng):
        n_in, n_out = int(member.sum()), int((~member).sum())
        if n_in == 0 or n_out == 0:
            return Result(0.0, m=scores.size, details={"note": "one group is empty"})
        if opts.threshold == "fixed" and opts.fixed_threshold is not None:
            t = float(_pair(opts.fixed_threshold, "fixed_threshold")[0])
            tp, fp = int(np.sum(member & (scores >= t))), int(np.sum(~member & (scores >= t)))
            eps = math.log((tp / n_in) / (fp / n_out)) if tp and fp else (math.inf if tp else 0.0)
            return Result(max(eps, 0.0), m=scores.size, counts={"tp": tp, "fp": fp, "n_members": n_in},
                          details={"threshold_value": t, "note": "estimate, not a bound"})
        ranked = RankedCanaries.build(scores, member, rng)
        best = (0.0, 0, 0, 0)
        for k, _ in one_run_grid(scores.size, sided="one-sided"):
            tp = int(ranked.tp_top[k])
            fp = k - tp
            if fp >= 1 and tp >= 1:
                eps = math.log((tp / n_in) / (fp / n_out))
                if eps > best[0]:
                    best = (eps, k, tp, fp)
        eps, k, tp, fp = best
        return Result(eps, r=k or None, v=tp or None, m=scores.size,
                      counts={"k_plus": k, "tp": tp, "fp": fp, "n_members": n_in},
                      details={"note": "estimate, not a bound: the best top-k rule, no correction"})
