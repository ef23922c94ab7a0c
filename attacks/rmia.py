"""RMIA: Zarifzadeh, Liu, Lee & Shokri 2024 ("Low-Cost High-Power Membership Inference Attacks",
ICML, arXiv 2312.03262).

Pr(x|θ) is the model's probability of the example: ``exp(−loss)`` (the true-label softmax
probability for a classifier; the per-token geometric-mean probability for a causal LM).
Pr(x) is its average over reference models, LR(x) = Pr(x|θ)/Pr(x), and

    score(x) = fraction of population samples z with LR(x) / LR(z) > γ.

Pr(x) per example: online, ½(mean over IN models + mean over OUT models); offline (only OUT
models, or ``offline=True``) the paper's linear approximation of the IN model from the OUT ones,
Pr_in ≈ a·Pr_out + (1 − a), so Pr(x) = ½((1 + a)·Pr_out(x) + (1 − a)) (Appendix "offline"; a = 1
uses Pr_out alone). This works with a single reference model. An example that no OUT model
covers uses the mean Pr_out of all examples.

Population z: by default the other target examples (each x is compared with the n − 1 others;
with the usual γ = 1 the score is then x's rank of LR among them). ``fit(reference,
population=(target_signals_z, reference_signals_z))`` uses separate population samples instead:
their signals under the target model and under the same reference models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from dp_audit.attacks.base import ATTACKS, Attack
from dp_audit.attacks.signals import ReferenceSignals, Signals
from dp_audit.errors import UsageError


def _log_mean(logp: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log of the per-example mean of exp(logp) over the masked models, and the counts."""
    count = mask.sum(axis=0)
    masked = np.where(mask, logp, -np.inf)
    with np.errstate(divide="ignore"):
        lm = logsumexp(masked, axis=0) - np.log(np.maximum(count, 1))
    return np.where(count > 0, lm, -np.inf), count


def log_pr_x(reference: ReferenceSignals, *, a: float, offline: bool) -> np.ndarray:
    """log Pr(x) for each example from its reference models (see the module docstring)."""
    logp = -reference.stack("loss")
    in_mask = reference.in_mask
    out_mask = ~in_mask
    if not out_mask.any():
        raise UsageError("RMIA needs at least one reference model that did not train on the examples")
    lm_out, c_out = _log_mean(logp, out_mask)
    fallback = float(logsumexp(logp[out_mask]) - np.log(out_mask.sum()))
    lm_out = np.where(c_out > 0, lm_out, fallback)
    # offline approximation: ½((1+a)·Pr_out + (1−a)), in log space
    if a >= 1.0:
        approx = lm_out
    else:
        approx = np.logaddexp(np.log1p(a) + lm_out, np.log1p(-a)) - np.log(2.0)
    if offline:
        return approx
    lm_in, c_in = _log_mean(logp, in_mask)
    both = (c_in > 0) & (c_out > 0)
    online = np.logaddexp(np.where(both, lm_in, 0.0), lm_out) - np.log(2.0)
    return np.where(both, online, approx)


@ATTACKS.register("rmia")
@dataclass(kw_only=True, eq=False)
class RMIA(Attack):
    """RMIA with γ (``gamma``), the offline parameter ``a`` and ``offline`` (ignore IN models)."""

    name = "rmia"
    needs_reference = "offline"
    requires = ("loss",)
    gamma: float = 1.0
    a: float = 0.3
    offline: bool = False

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise UsageError(f"rmia: gamma must be > 0, got {self.gamma}")
        if not 0.0 < self.a <= 1.0:
            raise UsageError(f"rmia: a must be in (0, 1], got {self.a}")

    def fit(self, reference: ReferenceSignals | None = None, *,
            population: tuple[Signals, ReferenceSignals] | None = None) -> "RMIA":
        self.population_ = population
        return super().fit(reference)

    def _fit(self, reference: ReferenceSignals | None) -> None:
        self.log_pr_x_ = log_pr_x(reference, a=self.a, offline=self.offline)
        self.log_lr_z_ = None
        if self.population_ is not None:
            z_target, z_ref = self.population_
            if not isinstance(z_ref, ReferenceSignals) or z_ref.n_models != reference.n_models:
                raise UsageError("rmia: population reference signals must come from the same reference models")
            if z_target.n != z_ref.n:
                raise UsageError("rmia: population target and reference signals cover different examples")
            self.log_lr_z_ = np.sort(-z_target.loss - log_pr_x(z_ref, a=self.a, offline=self.offline))

    def _score(self, target: Signals) -> np.ndarray:
        log_lr_x = -target.loss - self.log_pr_x_
        thresh = log_lr_x - np.log(self.gamma)  # LR(x)/LR(z) > γ  <=>  log LR(z) < log LR(x) − log γ
        if self.log_lr_z_ is not None:
            return np.searchsorted(self.log_lr_z_, thresh, side="left") / self.log_lr_z_.size
        if target.n < 2:
            raise UsageError("rmia without a population needs at least 2 target examples")
        z = np.sort(log_lr_x)
        count = np.searchsorted(z, thresh, side="left") - (self.gamma < 1.0)  # x itself counts iff γ < 1
        return count / (target.n - 1)
