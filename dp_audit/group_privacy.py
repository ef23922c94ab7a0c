"""Per-example ε lower bounds from canaries inserted k times (``canaries.repeat = k``).

A claim "(ε, δ)-DP" is per example. A canary inserted k times is a group of k examples: under the
claim, adding or removing it is only (kε, δ_k)-indistinguishable, with the group-privacy
δ_k = δ·(1 + e^ε + … + e^{(k−1)ε}) = δ·(e^{kε} − 1)/(e^ε − 1) (Vadhan 2017, Lemma 2.2; Dwork &
Roth 2014, Theorem 2.2 for pure ε). An estimator run on such canaries bounds the *group's* ε, so
comparing it with the per-example claim can refute an honest DP-SGD run.

:func:`per_example_bound` turns a group-level estimator into a per-example one: the largest ε
whose group guarantee (kε, δ_k(ε)) the canary scores reject,

    ε_LB = sup{ ε ≥ 0 : ε_LB^group(δ_k(ε)) > k·ε }.

The left side falls and the right side grows with ε, so this is one crossing (bisection). If the
pipeline is (ε*, δ)-DP per example, the group test at ε* rejects with probability at most α, and
ε_LB > ε* implies that rejection: ε_LB is a lower bound at confidence 1 − α, valid for any claim
(also ε = inf), and comparing it with the claimed ε is the same as testing the claim's group
guarantee. With pure ε (δ = 0) it is ε_LB^group / k. Weak by design for large kε (δ_k ≥ 1
certifies nothing): to audit a per-example claim sharply, use ``repeat = 1``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from dp_audit.errors import UsageError
from dp_audit.records import EpsilonEstimate

ITERATIONS = 40
CAP = 1e6  # ε above which the search stops and reports inf


def group_delta(epsilon: float, delta: float, k: int) -> float:
    """δ_k of a group of k under (ε, δ)-DP: δ·(e^{kε} − 1)/(e^ε − 1) (k·δ at ε = 0; inf if it overflows)."""
    if k < 1:
        raise UsageError(f"group size must be >= 1, got {k}")
    if k == 1 or delta == 0:
        return float(delta)
    if epsilon == 0:
        return k * delta
    try:
        return delta * math.expm1(k * epsilon) / math.expm1(epsilon)
    except OverflowError:
        return math.inf


def per_example_bound(estimate_at: Callable[[float], EpsilonEstimate], *, k: int, delta: float) -> EpsilonEstimate:
    """The per-example estimate from ``estimate_at(δ')``, a group-level estimator at δ' (module
    docstring). k = 1 returns ``estimate_at(delta)`` unchanged."""
    if k == 1:
        return estimate_at(delta)

    def group_at(eps: float) -> EpsilonEstimate | None:
        d = group_delta(eps, delta, k)
        return estimate_at(d) if d < 1 else None  # δ_k >= 1: the group guarantee says nothing

    def rejects(eps: float) -> bool:
        est = group_at(eps)
        return est is not None and est.epsilon_lb > k * eps

    at_zero = group_at(0.0)
    if at_zero is None:
        raise UsageError(f"k·δ = {k * delta:g} >= 1: canaries repeated {k} times cannot test a claim with δ = {delta:g}")
    lo = 0.0
    if rejects(lo):
        hi = 1.0
        while rejects(hi) and hi < CAP:
            lo, hi = hi, 2 * hi
        if rejects(hi):  # only with δ = 0 and an unbounded group estimate: no finite crossing
            lo = math.inf
        else:
            for _ in range(ITERATIONS):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if rejects(mid) else (lo, mid)
    group = (group_at(lo) if math.isfinite(lo) else at_zero) or at_zero
    return dataclasses.replace(group, epsilon_lb=lo, delta=delta, details={
        **group.details, "group_size": k, "group_epsilon_lb": group.epsilon_lb, "group_delta": group.delta,
        "note": f"canaries inserted {k} times bound k-fold group privacy; epsilon_lb is the per-example ε whose "
                f"group guarantee (kε, δ_k) the scores refute (dp_audit.group_privacy)"})
