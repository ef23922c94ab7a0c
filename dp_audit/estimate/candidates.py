"""Guess rules of the one-run game and the data-independent candidate grids they are chosen from.

A one-run guess rule is (k+, k−): guess "member" for the k+ highest scores and "non-member" for
the k− lowest (k− = 0: one-sided). The number of guesses r = k+ + k− is part of the rule, so
choosing it after looking at the outcome is a multiple comparison. The candidate set below
depends on m only (never on the scores or membership), so a Bonferroni correction over its size
is valid; see docs/estimators.md for why dividing α by the size of a data-dependent Pareto
frontier is not.

Ties between scores are broken by a random permutation drawn from the caller's rng: a fixed
order (e.g. file order, which may list members first) could leak membership into the guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_RATIO = 2 ** 0.5


def size_grid(n: int, *, ratio: float = GRID_RATIO, include_zero: bool = False) -> np.ndarray:
    """Sorted integers 1, ⌈√2⌉, 2, 3, 4, 6, 8, ... up to n (a geometric grid), plus ⌊n/2⌋ and n."""
    if n <= 0:
        return np.zeros(1, dtype=np.int64) if include_zero else np.zeros(0, dtype=np.int64)
    top = int(np.floor(np.log(n) / np.log(ratio))) + 1
    vals = np.unique(np.round(ratio ** np.arange(top + 1)).astype(np.int64))
    vals = vals[(vals >= 1) & (vals <= n)]
    extra = [n, n // 2] + ([0] if include_zero else [])
    vals = np.concatenate([vals, np.array(extra, dtype=np.int64)])
    return np.unique(vals[(vals >= 1) | include_zero])


def one_run_grid(m: int, *, sided: str = "two-sided") -> list[tuple[int, int]]:
    """Candidate (k+, k−) rules for m canaries: (k, 0) for k in the size grid, and for two-sided
    guessing also (k, k) with 2k <= m (Steinke et al. 2023 guess k+ = k− in their experiments)."""
    ks = [int(k) for k in size_grid(m)]
    cands = [(k, 0) for k in ks]
    if sided == "two-sided":
        cands += [(k, k) for k in ks if 2 * k <= m]
    elif sided != "one-sided":
        raise ValueError(f"sided must be 'one-sided' or 'two-sided', got {sided!r}")
    return cands


@dataclass(frozen=True)
class RankedCanaries:
    """Membership ordered from the highest score to the lowest, with cumulative counts, so that
    the counts of any (k+, k−) rule cost O(1)."""

    member_desc: np.ndarray  # bool, by decreasing score
    scores_desc: np.ndarray
    tp_top: np.ndarray  # tp_top[k] = members among the k highest
    tn_bottom: np.ndarray  # tn_bottom[k] = non-members among the k lowest

    @classmethod
    def build(cls, scores: np.ndarray, member: np.ndarray, rng: np.random.Generator) -> "RankedCanaries":
        # Ties are ordered by a random permutation (a stable sort of the permuted scores). Without
        # ties every sort gives the same order, so the 3-4x faster default sort is tried first and
        # the permutation and the stable sort are used only when tied scores exist (the rng is then
        # not consumed; nothing after the ranking draws from it).
        order = np.argsort(-scores)
        ranked = scores[order]
        if np.any(ranked[1:] == ranked[:-1]):
            perm = rng.permutation(scores.size)
            order = perm[np.argsort(-scores[perm], kind="stable")]
        mem = member[order]
        tp_top = np.concatenate([[0], np.cumsum(mem)])
        tn_bottom = np.concatenate([[0], np.cumsum(~mem[::-1])])
        return cls(member_desc=mem, scores_desc=scores[order], tp_top=tp_top, tn_bottom=tn_bottom)

    @property
    def m(self) -> int:
        return int(self.member_desc.size)

    def counts(self, k_plus: int, k_minus: int) -> tuple[int, int]:
        """(r, v) of the rule (k+, k−); overlapping rules are clipped so that r <= m."""
        k_plus = int(min(max(k_plus, 0), self.m))
        k_minus = int(min(max(k_minus, 0), self.m - k_plus))
        return k_plus + k_minus, int(self.tp_top[k_plus] + self.tn_bottom[k_minus])

    def thresholds(self, k_plus: int, k_minus: int) -> tuple[float | None, float | None]:
        """Score thresholds that reproduce the rule on new data: member iff s >= t+, non-member
        iff s <= t− (None: no guesses of that kind)."""
        t_plus = float(self.scores_desc[k_plus - 1]) if k_plus > 0 else None
        t_minus = float(self.scores_desc[self.m - k_minus]) if k_minus > 0 else None
        return t_plus, t_minus


def counts_at_thresholds(scores: np.ndarray, member: np.ndarray, t_plus: float | None,
                         t_minus: float | None) -> tuple[int, int, int, int]:
    """(r, v, k+, k−) of the threshold rule: member iff s >= t+, else non-member iff s <= t−."""
    guess_in = scores >= t_plus if t_plus is not None else np.zeros(scores.size, dtype=bool)
    guess_out = (scores <= t_minus) & ~guess_in if t_minus is not None else np.zeros(scores.size, dtype=bool)
    v = int(np.sum(member & guess_in) + np.sum(~member & guess_out))
    kp, km = int(guess_in.sum()), int(guess_out.sum())
    return kp + km, v, kp, km
