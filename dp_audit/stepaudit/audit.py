"""``step_audit``: run a construction's trials and bound ε (DESIGN.md §7)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from dp_audit.errors import UsageError
from dp_audit.records import Verdict
from dp_audit.stepaudit import bounds
from dp_audit.stepaudit.compose import ComposedClaim, check_steps, compose_claim
from dp_audit.stepaudit.construction import Construction
from dp_audit.stepaudit.result import StepAuditResult
from dp_audit.stepaudit.trials import DEFAULT_CHUNK, run_trials

DEFAULT_CALIBRATION_FRACTION = 0.1


def counted_methods(cons: Construction) -> tuple[str, ...]:
    """Clopper-Pearson always; GDP only under a declared μ-GDP claim (√k·μ-GDP for k steps)."""
    return ("clopper-pearson", "gdp") if cons.claim_mu is not None else ("clopper-pearson",)


def claim_of(cons: Construction, steps: int) -> ComposedClaim:
    """The claim a ``steps``-step trial is tested against (the per-step claim for one step)."""
    return compose_claim(epsilon=cons.claim_epsilon, delta=cons.delta, mu=cons.claim_mu,
                         laplace_epsilon=cons.laplace_epsilon, steps=steps, name=f"construction {cons.name!r}")


def step_audit(construction: Construction, *, trials: int, alpha: float = 0.05, seed: int = 0,
               progress: bool = True, threshold: str = "calibration",
               calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION, chunk: int = DEFAULT_CHUNK,
               batched: bool | None = None, out: str | Path | None = None, steps: int = 1,
               scale=None) -> StepAuditResult:
    """Run ``trials`` trials on d0 and ``trials`` on d1 and bound ε at confidence 1 − α.

    A trial is one step, or ``steps`` = k consecutive steps (the state evolves, the canary is in
    d1 at every step, the release is the sum of the k releases); the claim is then the k-fold
    composition of the per-step claim (:func:`claim_of`). It is refuted when a counted
    estimator's ε_LB exceeds it; α is split evenly over the counted estimators. ``out``: also write the output directory
    (manifest.json, trials.npz, step_audit.json; see :func:`write_step_audit`).
    """
    if not isinstance(construction, Construction):
        raise UsageError("step_audit needs a Construction (dp_audit.stepaudit.Construction)")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 0.5):
        raise UsageError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if threshold not in bounds.STRATEGIES:
        raise UsageError(f"unknown threshold strategy {threshold!r}; known: {', '.join(bounds.STRATEGIES)}")
    if not isinstance(trials, int) or trials < 2:
        raise UsageError(f"trials must be an integer >= 2, got {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UsageError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    steps = check_steps(steps)
    claim = claim_of(construction, steps)  # before the trials: a claim that cannot compose is a usage error
    if steps > 1 and construction.advance is None:
        raise UsageError(f"construction {construction.name!r} does not say how its state evolves (no advance): "
                         "it supports single-step audits only (steps 1)")
    if out is not None:
        from dp_audit.stepaudit.output import check_out

        check_out(out)  # before the trials: never run them for nothing
    n_cal = 0
    if threshold == "calibration":
        if not 0 < calibration_fraction < 1:
            raise UsageError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
        n_cal = int(round(calibration_fraction * trials))
        if not 1 <= n_cal <= trials - 1:
            raise UsageError(f"{trials} trials are too few for a calibration split of {calibration_fraction}")

    t0 = time.perf_counter()
    scores = run_trials(construction, trials=trials, seed=seed, chunk=chunk, progress=progress, batched=batched,
                        steps=steps, scale=scale)
    t1 = time.perf_counter()
    methods = counted_methods(construction)
    a_each = alpha / len(methods)
    estimates = []
    for method in methods:
        est = bounds.bound(scores.d0, scores.d1, method=method, alpha=a_each, delta=claim.delta,
                           threshold=threshold, calibration=n_cal)
        refutes = est.epsilon_lb > claim.epsilon
        estimates.append(dataclasses.replace(est, details={**est.details, "counted": True, "refutes": refutes}))
    t2 = time.perf_counter()
    best = max(estimates, key=lambda e: e.epsilon_lb)
    refuted = any(e.details["refutes"] for e in estimates)
    verdict = Verdict(status="fail" if refuted else "pass", claimed_epsilon=claim.epsilon,
                      epsilon_lb_max=best.epsilon_lb, alpha=float(alpha), alpha_per_test=a_each,
                      n_tests=len(methods), best_method=best.method, threat_model="step-level")
    timings = {"trials_seconds": t1 - t0, "d0_seconds": scores.seconds_d0, "d1_seconds": scores.seconds_d1,
               "estimate_seconds": t2 - t1,
               "trials_per_second": 2 * trials / (t1 - t0) if t1 > t0 else math.inf,
               "batched": scores.batched, "release_dim": scores.release_dim}
    res = StepAuditResult(construction=construction.name, description=construction.description, trials=trials,
                          calibration_trials=n_cal, alpha=float(alpha), delta=construction.delta, seed=int(seed),
                          threshold=threshold, claim_epsilon=float(claim.epsilon),
                          claim_mu=claim.mu, estimates=tuple(estimates), eps_lb=best.epsilon_lb,
                          refuted=refuted, verdict=verdict, timings=timings, info=dict(construction.info or {}),
                          scores_d0=scores.d0, scores_d1=scores.d1, steps=steps,
                          composition=claim.to_dict() if steps > 1 else None)
    if out is not None:
        from dp_audit.stepaudit.output import write_step_audit

        write_step_audit(res, out, config={"chunk": chunk, "calibration_fraction": calibration_fraction})
    return res


__all__ = ["DEFAULT_CALIBRATION_FRACTION", "claim_of", "counted_methods", "step_audit"]
