"""Empirical ε lower bounds from membership scores (DESIGN.md §6). numpy + scipy only, no torch.

>>> est = estimate_epsilon(scores, member, method="steinke", alpha=0.05, delta=1e-5)
>>> est.epsilon_lb

Methods (``ESTIMATORS``): ``steinke`` and ``fdp`` (one training run, canaries with Bernoulli(1/2)
membership), ``clopper-pearson`` and ``gdp`` (one score per independent run or trial), ``raw``
(ln(TPR/FPR): an estimate, not a bound). Threshold strategies: ``bonferroni`` (default),
``heldout``, ``fixed``. docs/estimators.md has the sources, the validity argument of each
strategy and the tightness table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dp_audit.errors import UsageError
from dp_audit.estimate.estimators import ESTIMATORS, STRATEGIES, Estimator, Options
from dp_audit.io import validate_scores
from dp_audit.records import THREAT_MODELS, EpsilonEstimate

METHODS = tuple(ESTIMATORS.names())
BOUND_METHODS = tuple(n for n in METHODS if ESTIMATORS.get(n).is_bound)
SIDED = ("two-sided", "one-sided")
MU_GDP_ONLY = "valid only under a μ-GDP claim"


def get_estimator(method: str, *, fdp_null: str = "eps-delta") -> Estimator:
    cls = ESTIMATORS.get(method)
    return cls(null=fdp_null) if method == "fdp" else cls()


def _check(alpha: float, delta: float, threshold: str, threat_model: str, sided: str) -> None:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 0.5):
        raise UsageError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if not (isinstance(delta, (int, float)) and 0 <= delta < 1):
        raise UsageError(f"delta must be in [0, 1), got {delta!r}")
    if threshold not in STRATEGIES:
        raise UsageError(f"unknown threshold strategy {threshold!r}; known: {', '.join(STRATEGIES)}")
    if threat_model not in THREAT_MODELS:
        raise UsageError(f"unknown threat model {threat_model!r}; known: {', '.join(THREAT_MODELS)}")
    if sided not in SIDED:
        raise UsageError(f"sided must be one of {', '.join(SIDED)}, got {sided!r}")


def estimate_epsilon(
    scores: Any,
    member: Any,
    *,
    method: str = "steinke",
    alpha: float = 0.05,
    delta: float = 1e-5,
    threshold: str = "bonferroni",
    threat_model: str = "black-box",
    fixed_k: int | tuple[int, int] | None = None,
    fixed_threshold: float | tuple[float | None, float | None] | None = None,
    heldout_fraction: float = 0.5,
    sided: str = "two-sided",
    fdp_null: str = "eps-delta",
    rng: np.random.Generator | None = None,
    attack: str | None = None,
) -> EpsilonEstimate:
    """One ε estimate from one score set (higher score = more likely member).

    ``epsilon_lb`` holds with probability >= 1 − ``alpha`` for every method with ``is_bound``.
    ``rng`` breaks score ties and draws the held-out split (default: ``default_rng(0)``, so the
    result is a deterministic function of the inputs). ``fdp_null`` (method ``fdp`` only):
    ``"eps-delta"`` tests the (ε, δ)-DP curve (valid for any mechanism), ``"gdp"`` tests μ-GDP
    (tighter; refutes only Gaussian-shaped claims). Bad inputs raise :class:`UsageError`.
    """
    scores, member = validate_scores(scores, member)
    estimator = get_estimator(method, fdp_null=fdp_null)
    _check(alpha, delta, threshold, threat_model, sided)
    if delta == 0 and (method == "gdp" or (method == "fdp" and fdp_null == "gdp")):
        # a μ-GDP claim with μ > 0 is never (ε, 0)-DP: its ε at δ = 0 is infinite, nothing to bound
        raise UsageError(f"method {method!r}{' with fdp_null gdp' if method == 'fdp' else ''} needs delta > 0 "
                         "(μ-GDP has no finite ε at δ = 0); use steinke, fdp or clopper-pearson for δ = 0")
    if not member.any() or member.all():
        raise UsageError("scores need both members and non-members")
    rng = rng if rng is not None else np.random.default_rng(0)
    opts = Options(alpha=float(alpha), delta=float(delta), threshold=threshold, fixed_k=fixed_k,
                   fixed_threshold=fixed_threshold, heldout_fraction=heldout_fraction, sided=sided)
    res = estimator.estimate(scores, member, opts, rng)
    details = {"design": estimator.design, "reference": estimator.reference, **res.details}
    if method == "fdp":
        details["null"] = fdp_null
    if method == "gdp" or (method == "fdp" and fdp_null == "gdp"):
        details["validity"] = MU_GDP_ONLY  # refutes μ-GDP, not (ε, δ)-DP: docs/estimators.md
    if not estimator.is_bound:
        details["note"] = "estimate, not a bound"
    return EpsilonEstimate(
        method=method, epsilon_lb=float(res.epsilon), alpha=float(alpha), delta=float(delta),
        m=int(res.m if res.m is not None else scores.size), threshold=threshold, threat_model=threat_model,
        is_bound=estimator.is_bound, r=res.r, v=res.v, counts=res.counts, attack=attack, details=details,
    )


def epsilon_ceiling(m: int, *, method: str = "steinke", alpha: float = 0.05, delta: float = 1e-5,
                    threshold: str = "bonferroni", sided: str = "two-sided", fdp_null: str = "eps-delta") -> float:
    """The audit's power: the ε_LB of a perfect attack (every guess right) with m scores, half of
    them members, at the same α, δ and threshold strategy (``fixed``: all m guesses made)."""
    estimator = get_estimator(method, fdp_null=fdp_null)
    if not estimator.is_bound:
        raise UsageError(f"method {method!r} is not a bound; it has no ceiling")
    if m < 2:
        return 0.0
    member = np.zeros(m, dtype=bool)
    member[: m // 2] = True
    scores = member.astype(float)
    kw: dict[str, Any] = {}
    if threshold == "fixed":
        kw = {"fixed_k": (m // 2, m - m // 2)} if estimator.design == "one-run" else {"fixed_threshold": 0.5}
    est = estimate_epsilon(scores, member, method=method, alpha=alpha, delta=delta, threshold=threshold,
                           sided=sided, fdp_null=fdp_null, rng=np.random.default_rng(0), **kw)
    return est.epsilon_lb


__all__ = ["MU_GDP_ONLY", "estimate_epsilon", "epsilon_ceiling", "get_estimator", "ESTIMATORS", "METHODS", "BOUND_METHODS",
           "STRATEGIES", "Estimator"]
