"""Exposure of secret canaries (Carlini, Liu, Erlingsson, Kos & Song 2019, "The Secret Sharer",
USENIX Security, §4) and the ε lower bound it gives.

Exposure. A secret canary is a template with a random secret s drawn uniformly from a space R
(``dp_audit.lm_canaries``). With K candidate secrets c_1..c_K drawn i.i.d. from the same
distribution, independently of training, the rank of the canary among the K + 1 texts is

    rank = 1 + #{j : loss(c_j) ≤ loss(s)}          (ties count against the canary)

and exposure = log2(K + 1) − log2(rank) ∈ [0, log2(K + 1)]: the paper's definition with the sampled
set {s, c_1..c_K} as the randomness space (its §4.3 estimates the rank in the full space from a
sample in the same way). Exposure is the attack score (higher = member).

Why P[exposure ≥ k] ≤ e^ε·2^(−k) + δ. Let E be the event {exposure ≥ k} = {rank ≤ (K+1)·2^(−k)}.
It is a function of the released model, s and the candidates. (1) Without the canary in training
(model independent of s and of the candidates), s, c_1..c_K are i.i.d. given the model, so the
canary's rank among them is uniform (pessimistic ties only lower it): P_out[E] ≤ 2^(−k).
(2) Adding the canary is one add/remove neighbour, so for every s and candidate draw
P_in[E] ≤ e^ε·P_out[E] + δ, and averaging over them keeps the inequality:
P_in[exposure ≥ k] ≤ e^ε·2^(−k) + δ.

Lower-bound procedure (``exposure_epsilon_bound``). The m member canaries share one model, so
their events are dependent: a binomial test would be invalid. Markov's inequality needs no
independence: for fixed k, the count X_k = #{members with exposure ≥ k} has E[X_k] ≤ m·p(ε, k),
p(ε, k) = e^ε·2^(−k) + δ, so P[X_k ≥ j] ≤ m·p(ε, k)/j (j = 1 is the union bound on the largest
exposure). For each j in a grid J fixed in advance (default 1, 2, 4, ... ≤ m), let k_j be the
j-th largest member exposure and

    ε_j = k_j·ln 2 + ln(j·α/(|J|·m) − δ)   (0 if j·α/(|J|·m) ≤ δ),    ε_LB = max(0, max_j ε_j).

Validity: if the mechanism is ε*-DP, ε_j > ε* means k_j > k*, where m·p(ε*, k*)/j = α/|J|, i.e.
at least j members have exposure > k*; that has probability ≤ m·p(ε*, k*)/j = α/|J|. A union
over J (Bonferroni) gives P[ε_LB > ε*] ≤ α. The bound can never exceed ln(K + 1) + ln(α/|J|):
strong bounds need many candidates.

The skew-normal extrapolation of exposure to the whole secret space (the paper's §4.3) is in
``dp_audit.attacks.exposure_extrapolation``: an estimate reported next to this one, never used in
the bound (the sampled rank's null distribution is exact; a fitted tail is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dp_audit.attacks.base import ATTACKS, Attack
from dp_audit.attacks.signals import Signals
from dp_audit.errors import UsageError
from dp_audit.records import EpsilonEstimate


def exposure_from_losses(loss: np.ndarray, candidate_loss: np.ndarray) -> np.ndarray:
    """Exposure of each example among its K candidates (ties count against the example)."""
    loss = np.asarray(loss, dtype=np.float64)
    cand = np.asarray(candidate_loss, dtype=np.float64)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand, (loss.size, cand.size))
    if cand.shape[0] != loss.size or cand.shape[1] < 1:
        raise UsageError(f"exposure: candidate losses of shape {cand.shape} do not match {loss.size} examples")
    # a NaN compares False with everything: it would rank below the canary and raise its exposure
    if np.isnan(loss).any() or np.isnan(cand).any():
        raise UsageError(f"exposure: {int(np.isnan(loss).sum())} canary and {int(np.isnan(cand).sum())} candidate "
                         "loss value(s) are NaN")
    rank = 1 + (cand <= loss[:, None]).sum(axis=1)
    return np.log2(cand.shape[1] + 1) - np.log2(rank)


@ATTACKS.register("exposure")
@dataclass(kw_only=True, eq=False)
class ExposureAttack(Attack):
    """Secret Sharer exposure: log2(K+1) − log2(rank of the canary among K candidates by loss)."""

    name = "exposure"
    needs_reference = 0
    kinds = ("causal-lm",)
    requires = ("loss", "candidate_loss")

    def _score(self, target: Signals) -> np.ndarray:
        return exposure_from_losses(target.loss, target.candidate_loss)


def default_j_grid(m: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(int(math.floor(math.log2(m))) + 1)) if m >= 1 else ()


def exposure_epsilon_bound(
    exposures: Sequence[float] | np.ndarray,
    *,
    delta: float,
    alpha: float,
    member: Sequence[bool] | np.ndarray | None = None,
    j_grid: Sequence[int] | None = None,
    attack: str | None = "exposure",
    threat_model: str = "black-box",
) -> EpsilonEstimate:
    """ε lower bound at confidence 1 − α from the exposures of member canaries (module docstring).

    ``exposures`` are those of the inserted canaries, or of all canaries with ``member`` saying
    which were inserted (only members are used). ``j_grid`` (default 1, 2, 4, ... ≤ m) must be
    fixed before looking at the exposures; α is split evenly over it.
    """
    e = np.asarray(exposures, dtype=np.float64).ravel()
    if member is not None:
        mem = np.asarray(member).ravel()
        if mem.shape != e.shape:
            raise UsageError(f"exposure bound: {e.size} exposures but {mem.size} membership flags")
        e = e[mem.astype(bool)]
    if e.size == 0:
        raise UsageError("exposure bound: no member canaries")
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise UsageError("exposure bound: exposures must be finite and >= 0")
    if not 0.0 < alpha < 1.0 or not 0.0 <= delta < 1.0:
        raise UsageError(f"exposure bound: need 0 < alpha < 1 and 0 <= delta < 1, got alpha={alpha}, delta={delta}")
    m = int(e.size)
    grid = tuple(sorted({int(j) for j in (j_grid if j_grid is not None else default_j_grid(m))}))
    if not grid or grid[0] < 1 or grid[-1] > m:
        raise UsageError(f"exposure bound: j_grid must hold integers in [1, {m}], got {list(grid)}")
    a_j = alpha / len(grid)
    desc = np.sort(e)[::-1]
    best, best_j, per_j = 0.0, None, {}
    for j in grid:
        slack = j * a_j / m - delta
        eps_j = desc[j - 1] * math.log(2.0) + math.log(slack) if slack > 0 else 0.0
        per_j[str(j)] = {"k_j": float(desc[j - 1]), "epsilon": max(0.0, eps_j)}
        if eps_j > best:
            best, best_j = eps_j, j
    return EpsilonEstimate(
        method="exposure", epsilon_lb=float(best), alpha=float(alpha), delta=float(delta), m=m,
        threshold=f"j-grid {list(grid)}, Bonferroni", threat_model=threat_model, is_bound=True,
        r=best_j, v=None, counts={"max_exposure": float(desc[0]), "n_members": m}, attack=attack,
        details={"relation": "P[exposure >= k] <= e^eps 2^-k + delta", "procedure": "Markov over members",
                 "per_j": per_j},
    )
