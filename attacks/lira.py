"""LiRA: the likelihood ratio attack of Carlini, Chien, Nasr, Song, Terzis & Tramèr 2022
("Membership Inference Attacks From First Principles", IEEE S&P, arXiv 2112.03570).

Signal φ: the logit-scaled confidence ``confidence_logit`` (classifiers); for models without one
(causal LMs) φ = −loss, the log-likelihood per token. Per example i, the reference models that
trained on i give φ_in values and the others φ_out values; each set is modelled as a Gaussian.

- Online (``lira-online``): score = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²) (§IV-B, Alg. 1).
- Offline (``lira-offline``): only OUT models; the one-sided test "is φ larger than the OUT
  distribution predicts" (§IV-C). The paper's score 1 − Pr[Z > φ], Z ~ N(μ_out, σ_out²), equals
  Φ(z) with z = (φ − μ_out)/σ_out; Φ is monotone, so the score returned is z itself (the same
  ranking, and finite where Φ(z) rounds to 1).

Global variance (§VI-B "few shadow models"): with few reference models per-example variances are
noisy, so one variance per side is used for every example. ``global_variance=None`` (default)
uses it when R < 64, the paper's cut-off. The global variance pools the within-example residuals
(φ − μ_i) over all examples (degrees of freedom Σ(n_i − 1)); when no example has two values on a
side it falls back to the variance of all values on that side.
Per-example means with no reference on a side (possible with few models) are filled in from the
other side with the average IN−OUT shift over the examples that have both (online), or from the
mean of all OUT values (offline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from dp_audit.attacks.base import ATTACKS, Attack
from dp_audit.attacks.signals import ReferenceSignals, Signals
from dp_audit.errors import UsageError

GLOBAL_VARIANCE_BELOW = 64


def phi_of(signals: Signals) -> np.ndarray:
    """LiRA's signal: the logit-scaled confidence, or −loss when there is none."""
    return signals.confidence_logit if signals.confidence_logit is not None else -signals.loss


def reference_phi(reference: ReferenceSignals) -> np.ndarray:
    return np.stack([phi_of(s) for s in reference.signals])


@dataclass(frozen=True)
class SideFit:
    """Per-example Gaussian parameters of one side (IN or OUT)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: np.ndarray


def _side_means(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = mask.sum(axis=0)
    mu = np.where(count > 0, (values * mask).sum(axis=0) / np.maximum(count, 1), np.nan)
    return mu, count


def _side_sigma(values: np.ndarray, mask: np.ndarray, mu: np.ndarray, count: np.ndarray, *,
                use_global: bool, min_sigma: float) -> np.ndarray:
    resid2 = np.where(mask, (values - np.nan_to_num(mu)) ** 2, 0.0)
    dof = np.maximum(count - 1, 0).sum()
    if dof > 0:
        global_var = resid2.sum() / dof
    elif mask.sum() > 1:
        global_var = np.var(values[mask], ddof=1)
    else:
        global_var = 1.0  # a single value on this side: no scale information at all
    global_sigma = max(float(np.sqrt(global_var)), min_sigma)
    if use_global:
        return np.full(mu.shape, global_sigma)
    per = np.sqrt(resid2.sum(axis=0) / np.maximum(count - 1, 1))
    return np.where(count >= 2, np.maximum(per, min_sigma), global_sigma)


def fit_gaussians(phi: np.ndarray, in_mask: np.ndarray, *, global_variance: bool, min_sigma: float = 1e-4,
                  need_in: bool = True) -> tuple[SideFit | None, SideFit]:
    """Per-example IN/OUT Gaussians of (R, n) reference φ values (see the module docstring)."""
    out_mask = ~in_mask
    mu_out, c_out = _side_means(phi, out_mask)
    if not out_mask.any() and not need_in:
        raise UsageError("LiRA offline needs reference models that did not train on the examples")
    if not need_in:
        mu_out = np.where(c_out > 0, mu_out, phi[out_mask].mean())
        sig_out = _side_sigma(phi, out_mask, mu_out, c_out, use_global=global_variance, min_sigma=min_sigma)
        return None, SideFit(mu_out, sig_out, c_out)
    if not in_mask.any() or not out_mask.any():
        raise UsageError("LiRA online needs reference models that trained on the examples and models that did not")
    mu_in, c_in = _side_means(phi, in_mask)
    both = (c_in > 0) & (c_out > 0)
    shift = float(np.mean(mu_in[both] - mu_out[both])) if both.any() else float(phi[in_mask].mean() - phi[out_mask].mean())
    sig_in = _side_sigma(phi, in_mask, mu_in, c_in, use_global=global_variance, min_sigma=min_sigma)
    sig_out = _side_sigma(phi, out_mask, mu_out, c_out, use_global=global_variance, min_sigma=min_sigma)
    mu_in_f = np.where(c_in > 0, mu_in, mu_out + shift)
    mu_out_f = np.where(c_out > 0, mu_out, mu_in - shift)
    return SideFit(mu_in_f, sig_in, c_in), SideFit(mu_out_f, sig_out, c_out)


def _use_global(option: bool | None, n_models: int) -> bool:
    return n_models < GLOBAL_VARIANCE_BELOW if option is None else bool(option)


@ATTACKS.register("lira-online")
@dataclass(kw_only=True, eq=False)
class LiraOnline(Attack):
    """LiRA online: Gaussian likelihood ratio of φ under IN vs OUT reference models."""

    name = "lira-online"
    needs_reference = "online"
    requires = ("loss",)
    global_variance: bool | None = None
    min_sigma: float = 1e-4

    def _fit(self, reference: ReferenceSignals | None) -> None:
        self.global_variance_ = _use_global(self.global_variance, reference.n_models)
        self.in_, self.out_ = fit_gaussians(reference_phi(reference), reference.in_mask,
                                            global_variance=self.global_variance_, min_sigma=self.min_sigma)

    def _score(self, target: Signals) -> np.ndarray:
        phi = phi_of(target)
        return norm.logpdf(phi, self.in_.mu, self.in_.sigma) - norm.logpdf(phi, self.out_.mu, self.out_.sigma)


@ATTACKS.register("lira-offline")
@dataclass(kw_only=True, eq=False)
class LiraOffline(Attack):
    """LiRA offline: one-sided test of φ against the OUT Gaussian; score z = (φ − μ_out)/σ_out."""

    name = "lira-offline"
    needs_reference = "offline"
    requires = ("loss",)
    global_variance: bool | None = None
    min_sigma: float = 1e-4

    def _fit(self, reference: ReferenceSignals | None) -> None:
        self.global_variance_ = _use_global(self.global_variance, reference.n_models)
        _, self.out_ = fit_gaussians(reference_phi(reference), reference.in_mask,
                                     global_variance=self.global_variance_, min_sigma=self.min_sigma, need_in=False)

    def _score(self, target: Signals) -> np.ndarray:
        return (phi_of(target) - self.out_.mu) / self.out_.sigma
