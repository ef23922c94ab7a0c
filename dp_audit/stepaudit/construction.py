"""What a step-level audit runs: one training step, two neighbouring batches and a statistic.

A :class:`Construction` is the auditor's choice in DP's own threat model (DESIGN.md §0, §7): the
state the step starts from, the batch without the canary (``d0``) and with it (``d1``), and a
statistic of the released tensor fixed before any trial runs. ``step_fn(state, batch, generator)``
runs the mechanism once and returns the released tensor (1-D); all of its randomness must come
from ``generator``. ``batched_step_fn(state, batch, generator, n)`` (optional) returns n releases
(n, d) at once; it must have the same distribution as n calls of ``step_fn`` (tests check this
for the built-in constructions).

The claim is per step. ``claim_mu`` declares the step μ-GDP (a Gaussian mechanism, e.g. DP-SGD
without subsampling: μ = 1/σ); then ``claim_epsilon`` must be that μ's ε at ``delta``
(:func:`gaussian_claim` builds both) and the GDP bound is counted next to Clopper-Pearson.
k-step audits (``step_audit(..., steps=k)``) run k consecutive steps per trial: the state
evolves by ``advance(state, release) -> state`` (required for k > 1), the canary is in the batch
at every step, and the trial's release is the **sum of the k releases** (for a parameter update:
final minus initial parameters). ``batched_steps_fn(state, batch, generator, n, k)`` (optional)
returns n such sums at once, with the distribution of n unbatched k-step trials. The claim of k
steps is composed from the per-step one (:mod:`dp_audit.stepaudit.compose`): √k·μ under
``claim_mu``, the PLD of k Laplace mechanisms under ``laplace_epsilon`` (a pure ε0-DP Laplace step,
``claim_epsilon`` = ε0).

No torch import here: the core package stays torch-free at import time (DESIGN.md §1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from dp_audit.errors import UsageError
from dp_audit.estimate.gdp_math import gdp_epsilon

StepFn = Callable[[Any, Any, Any], Any]
BatchedStepFn = Callable[[Any, Any, Any, int], Any]
AdvanceFn = Callable[[Any, Any], Any]
BatchedStepsFn = Callable[[Any, Any, Any, int, int], Any]
Statistic = Callable[[Any], Any]

_CLAIM_RTOL = 1e-6


@dataclass(frozen=True)
class Construction:
    """One worst-case (or user-chosen) step-level experiment; see the module docstring."""

    name: str
    description: str
    step_fn: StepFn
    state: Any
    d0: Any
    d1: Any
    statistic: Statistic
    claim_epsilon: float
    delta: float
    claim_mu: float | None = None
    batched_step_fn: BatchedStepFn | None = None
    info: dict[str, Any] | None = None  # JSON-able facts about the construction (recorded in the output)
    advance: AdvanceFn | None = None  # state after a step that released ``release`` (k-step audits)
    laplace_epsilon: float | None = None  # the step is a Laplace mechanism, pure ε0-DP (composable by PLD)
    batched_steps_fn: BatchedStepsFn | None = None  # n k-step sums at once (optional)
    # how to rebuild it in another process ({'name', 'options'}; set by constructions.build for the
    # built-in ones): what lets its trial chunks run as scale-out tasks (docs/scale-out.md)
    spec: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError("construction name must be a non-empty string")
        for what in ("step_fn", "statistic"):
            if not callable(getattr(self, what)):
                raise UsageError(f"construction {self.name!r}: {what} must be callable")
        for what in ("batched_step_fn", "advance", "batched_steps_fn"):
            if getattr(self, what) is not None and not callable(getattr(self, what)):
                raise UsageError(f"construction {self.name!r}: {what} must be callable or None")
        if not 0 < self.delta < 1:
            raise UsageError(f"construction {self.name!r}: delta must be in (0, 1), got {self.delta!r}")
        if not (self.claim_epsilon >= 0):
            raise UsageError(f"construction {self.name!r}: claim_epsilon must be >= 0, got {self.claim_epsilon!r}")
        if self.claim_mu is not None:
            if not (self.claim_mu > 0 and math.isfinite(self.claim_mu)):
                raise UsageError(f"construction {self.name!r}: claim_mu must be a finite number > 0")
            implied = gdp_epsilon(self.delta, self.claim_mu)
            if abs(implied - self.claim_epsilon) > _CLAIM_RTOL * max(1.0, implied):
                raise UsageError(f"construction {self.name!r}: claim_epsilon {self.claim_epsilon:g} is not the ε of "
                                 f"{self.claim_mu:g}-GDP at δ={self.delta:g} ({implied:g}); use gaussian_claim()")
        if self.laplace_epsilon is not None:
            eps0 = self.laplace_epsilon
            if self.claim_mu is not None or not (isinstance(eps0, (int, float)) and eps0 > 0 and math.isfinite(eps0)):
                raise UsageError(f"construction {self.name!r}: laplace_epsilon must be a finite number > 0, "
                                 "and excludes claim_mu")
            if abs(eps0 - self.claim_epsilon) > _CLAIM_RTOL * max(1.0, eps0):
                raise UsageError(f"construction {self.name!r}: claim_epsilon {self.claim_epsilon:g} is not the "
                                 f"Laplace step's ε0 {eps0:g}")


def gaussian_claim(mu: float, delta: float) -> dict[str, float]:
    """``claim_epsilon``, ``delta`` and ``claim_mu`` of a μ-GDP step (keyword arguments of
    :class:`Construction`). A δ outside (0, 1) or a μ that is not a finite number > 0 is a
    usage error (exit 2), not an internal one."""
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise UsageError(f"delta must be in (0, 1), got {delta!r}")
    if not (isinstance(mu, (int, float)) and mu > 0 and math.isfinite(mu)):
        raise UsageError(f"the claim's mu must be a finite number > 0, got {mu!r}")
    return {"claim_epsilon": gdp_epsilon(delta, mu), "delta": float(delta), "claim_mu": float(mu)}


__all__ = ["Construction", "gaussian_claim"]
