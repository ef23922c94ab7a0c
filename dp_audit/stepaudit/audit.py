"""``step_audit``: run a construction's trials and bound ε (DESIGN.md §7)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from dp_audit.errors import UsageError
from dp_audit.records import Verdict
from dp_audit.stepaudit import bounds
from dp_audit.stepaudit.construction import Construction
from dp_audit.stepaudit.result import StepAuditResult
from dp_audit.stepaudit.trials import DEFAULT_CHUNK, run_trials

DEFAULT_CALIBRATION_FRACTION = 0.1


def counted_methods(cons: Construction) -> tuple[str, ...]:
    """Clopper-Pearson always; GDP only under a declared μ-GDP claim."""
    return ("clopper-pearson", "gdp") if cons.claim_mu is not None else ("clopper-pearson",)


def step_audit(construction: Construction, *, trials: int, alpha: float = 0.05, seed: int = 0,
               progress: bool = True, threshold: str = "calibration",
               calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION, chunk: int = DEFAULT_CHUNK,
               batched: bool | None = None, out: str | Path | None = None) -> StepAuditResult:
    """Run ``trials`` steps on d0 and ``trials`` on d1 and bound the step's ε at confidence 1 − α.

    The claim is refuted when a counted estimator's ε_LB exceeds ``construction.claim_epsilon``;
    α is split evenly over the counted estimators. ``out``: also write the output directory
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
    scores = run_trials(construction, trials=trials, seed=seed, chunk=chunk, progress=progress, batched=batched)
    t1 = time.perf_counter()
    methods = counted_methods(construction)
    a_each = alpha / len(methods)
    estimates = []
    for method in methods:
        est = bounds.bound(scores.d0, scores.d1, method=method, alpha=a_each, delta=construction.delta,
                           threshold=threshold, calibration=n_cal)
        refutes = est.epsilon_lb > construction.claim_epsilon
        estimates.append(dataclasses.replace(est, details={**est.details, "counted": True, "refutes": refutes}))
    t2 = time.perf_counter()
    best = max(estimates, key=lambda e: e.epsilon_lb)
    refuted = any(e.details["refutes"] for e in estimates)
    verdict = Verdict(status="fail" if refuted else "pass", claimed_epsilon=construction.claim_epsilon,
                      epsilon_lb_max=best.epsilon_lb, alpha=float(alpha), alpha_per_test=a_each,
                      n_tests=len(methods), best_method=best.method, threat_model="step-level")
    timings = {"trials_seconds": t1 - t0, "d0_seconds": scores.seconds_d0, "d1_seconds": scores.seconds_d1,
               "estimate_seconds": t2 - t1,
               "trials_per_second": 2 * trials / (t1 - t0) if t1 > t0 else math.inf,
               "batched": scores.batched, "release_dim": scores.release_dim}
    res = StepAuditResult(construction=construction.name, description=construction.description, trials=trials,
                          calibration_trials=n_cal, alpha=float(alpha), delta=construction.delta, seed=int(seed),
                          threshold=threshold, claim_epsilon=float(construction.claim_epsilon),
                          claim_mu=construction.claim_mu, estimates=tuple(estimates), eps_lb=best.epsilon_lb,
                          refuted=refuted, verdict=verdict, timings=timings, info=dict(construction.info or {}),
                          scores_d0=scores.d0, scores_d1=scores.d1)
    if out is not None:
        from dp_audit.stepaudit.output import write_step_audit

        write_step_audit(res, out, config={"chunk": chunk, "calibration_fraction": calibration_fraction})
    return res


__all__ = ["DEFAULT_CALIBRATION_FRACTION", "counted_methods", "step_audit"]
