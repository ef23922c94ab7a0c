"""Exposure in the full secret space by skew-normal extrapolation (Carlini, Liu, Erlingsson, Kos &
Song 2019, "The Secret Sharer", USENIX Security, §4.3 "Exposure estimation by extrapolation").

The sampled exposure of ``dp_audit.attacks.exposure`` ranks a canary among K sampled candidates,
so it can never exceed log2(K + 1). The paper's §4.3 observes that the log-perplexities of the
candidate secrets are close to a skew-normal distribution, fits one to them and reads the
canary's rank in the full space R off its CDF:

    exposure_extrapolated(s) = −log2 F̂(loss(s)),   F̂ = skew-normal fitted to the K candidate losses,

capped at log2|R| (the canary's rank in R is at least 1). For a secret never seen in training,
F̂(loss(s)) is close to uniform, so this too averages 1/ln 2 bits.

It is an *estimate*, not a bound: the fit is a modelling assumption, and far in the left tail
(where memorised secrets lie, beyond every sampled candidate) the fitted tail is extrapolated, not
measured. The ε lower bound keeps using the sampled ranks, whose distribution without the canary
is exactly uniform whatever the loss distribution (docs/language-models.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dp_audit.errors import UsageError

MIN_CANDIDATES = 20  # a three-parameter fit on fewer points is meaningless


@dataclass(frozen=True)
class SkewNormalFit:
    """Parameters of ``scipy.stats.skewnorm`` (shape a, loc, scale) fitted to candidate losses."""

    a: float
    loc: float
    scale: float
    n: int

    def cdf(self, x: np.ndarray) -> np.ndarray:
        from scipy.stats import skewnorm

        return skewnorm.cdf(np.asarray(x, dtype=np.float64), self.a, loc=self.loc, scale=self.scale)

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "loc": self.loc, "scale": self.scale, "n": self.n}


def fit_skewnorm(losses: np.ndarray) -> SkewNormalFit:
    """Maximum-likelihood skew-normal fit (``scipy.stats.skewnorm.fit``) to finite losses."""
    from scipy.stats import skewnorm

    x = np.asarray(losses, dtype=np.float64).ravel()
    if x.size < MIN_CANDIDATES:
        raise UsageError(f"skew-normal extrapolation needs at least {MIN_CANDIDATES} candidate losses, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise UsageError("skew-normal extrapolation: candidate losses must be finite")
    sd = float(np.std(x))
    if sd == 0.0:
        raise UsageError("skew-normal extrapolation: all candidate losses are equal")
    # fit on standardised losses (the optimiser is scale-sensitive), then map back
    mu = float(np.mean(x))
    a, loc, scale = skewnorm.fit((x - mu) / sd)
    return SkewNormalFit(a=float(a), loc=float(loc * sd + mu), scale=float(scale * sd), n=int(x.size))


def extrapolated_exposure(loss: np.ndarray, candidate_loss: np.ndarray, *, space_size: int | float,
                          ) -> tuple[np.ndarray, list[SkewNormalFit]]:
    """Per example: −log2 F̂(loss), F̂ fitted to its candidates' losses, clipped to [0, log2|R|].

    ``candidate_loss`` is (K,) shared by every example or (n, K) (one fit per distinct row).
    Returns the exposures and the fits (one per distinct candidate row, in order of first use)."""
    loss = np.asarray(loss, dtype=np.float64).ravel()
    cand = np.asarray(candidate_loss, dtype=np.float64)
    if cand.ndim == 1:
        cand = cand[None, :]
    if cand.shape[0] not in (1, loss.size):
        raise UsageError(f"extrapolated exposure: candidate losses of shape {cand.shape} do not match "
                         f"{loss.size} examples")
    if not (isinstance(space_size, (int, float)) and space_size >= 2 and math.isfinite(space_size)):
        raise UsageError(f"extrapolated exposure: the secret space size must be finite and >= 2, got {space_size}")
    if not np.all(np.isfinite(loss)):  # NaN would give exposure 0 silently (max(0.0, nan) is 0.0)
        raise UsageError("extrapolated exposure: canary losses must be finite")
    cap = math.log2(space_size)
    fits: dict[bytes, SkewNormalFit] = {}
    out = np.empty(loss.size, dtype=np.float64)
    for i in range(loss.size):
        row = cand[0 if cand.shape[0] == 1 else i]
        key = row.tobytes()
        if key not in fits:
            fits[key] = fit_skewnorm(row)
        p = float(fits[key].cdf(loss[i]))
        out[i] = cap if p <= 1.0 / space_size else min(cap, max(0.0, -math.log2(p)))
    return out, list(fits.values())
