"""The claim of k consecutive steps: the k-fold composition of the per-step claim.

- a μ-GDP step (``claim_mu``, e.g. DP-SGD without subsampling, μ = 1/σ): k steps are exactly
  √k·μ-GDP (Dong, Roth & Su 2022, Cor. 3.3); ε(δ) is that μ's closed form. dp-accounting's PLD of
  k Gaussian events is recorded next to it as a cross-check (``pld_epsilon``);
- a Laplace step (``laplace_epsilon`` = ε0, pure ε0-DP with scale = sensitivity/ε0, e.g. DP-ZO
  Laplace): ε(δ) of k compositions from dp-accounting's PLD accountant (pessimistic
  discretisation: an upper bound of the true ε(δ), so the claim is never understated);
- anything else: no composition is known to dp-audit, a k-step audit is a usage error.

k = 1 returns the per-step claim unchanged (the single-step audit's numbers, bit for bit).
No torch import (core package).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from dp_audit.errors import UsageError
from dp_audit.estimate.gdp_math import gdp_epsilon

PLD_DISCRETIZATION = 1e-4


@dataclass(frozen=True)
class ComposedClaim:
    steps: int
    epsilon: float
    delta: float
    mu: float | None
    accountant: str  # "per-step" (k = 1), "gdp" (√k·μ) or "pld-laplace"
    per_step_epsilon: float
    per_step_mu: float | None
    laplace_epsilon: float | None
    pld_epsilon: float | None = None  # dp-accounting PLD of the k steps (cross-check of the GDP claim)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "accountant": self.accountant,
                "per_step": {"epsilon": self.per_step_epsilon, "mu": self.per_step_mu,
                             "laplace_epsilon": self.laplace_epsilon},
                "pld_epsilon": self.pld_epsilon}


def check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


@functools.lru_cache(maxsize=256)
def _pld_cached(kind: str, noise_multiplier: float, steps: int, delta: float) -> float:
    """The PLD composition is a pure function of its inputs and costs ~1.7 s for a Gaussian (most of
    a small step audit): computed once per (mechanism, steps, δ) in a process."""
    from dp_accounting import dp_event

    event = (dp_event.GaussianDpEvent if kind == "gaussian" else dp_event.LaplaceDpEvent)(
        noise_multiplier=noise_multiplier)
    return _pld(event, steps, delta)


def _pld(event, steps: int, delta: float) -> float:
    from dp_accounting import pld

    acc = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    acc.compose(event, steps)
    return float(acc.get_epsilon(delta))


def pld_laplace_epsilon(epsilon_step: float, steps: int, delta: float) -> float:
    """ε(δ) of ``steps`` Laplace mechanisms with ε0 = ``epsilon_step`` each (dp-accounting PLD)."""
    return _pld_cached("laplace", 1.0 / float(epsilon_step), int(steps), float(delta))


def pld_gaussian_epsilon(mu_step: float, steps: int, delta: float) -> float:
    """ε(δ) of ``steps`` Gaussian mechanisms of μ = ``mu_step`` each (dp-accounting PLD)."""
    return _pld_cached("gaussian", 1.0 / float(mu_step), int(steps), float(delta))


def compose_claim(*, epsilon: float, delta: float, mu: float | None, laplace_epsilon: float | None,
                  steps: int, name: str = "construction") -> ComposedClaim:
    """The claim of ``steps`` compositions of a step claiming (epsilon, delta[, mu | laplace])."""
    steps = check_steps(steps)
    base = dict(delta=float(delta), per_step_epsilon=float(epsilon), per_step_mu=mu, laplace_epsilon=laplace_epsilon)
    if steps == 1:
        return ComposedClaim(steps=1, epsilon=float(epsilon), mu=mu, accountant="per-step", **base)
    if mu is not None:
        mu_k = math.sqrt(steps) * float(mu)
        return ComposedClaim(steps=steps, epsilon=gdp_epsilon(float(delta), mu_k), mu=mu_k, accountant="gdp",
                             pld_epsilon=pld_gaussian_epsilon(float(mu), steps, float(delta)), **base)
    if laplace_epsilon is not None:
        return ComposedClaim(steps=steps, epsilon=pld_laplace_epsilon(float(laplace_epsilon), steps, float(delta)),
                             mu=None, accountant="pld-laplace", **base)
    raise UsageError(f"{name}: a {steps}-step audit needs a composable per-step claim (claim_mu for a "
                     "Gaussian step or laplace_epsilon for a Laplace step)")


__all__ = ["ComposedClaim", "check_steps", "compose_claim", "pld_gaussian_epsilon", "pld_laplace_epsilon"]
