"""``dp-audit gate`` on a step-audit directory: "our training step is DP" as a CI check (issue 17).

The gate does not trust the stored verdict: it verifies every hash, then recomputes each counted
bound from ``trials.npz`` at the policy's α (split over the counted estimators: Clopper-Pearson
always, GDP only under the per-step μ-GDP claim the audit recorded), with the audit's own threshold
procedure (the calibration split, or Bonferroni over both orientations), and compares the largest
with the per-step claim plus the policy's tolerance. For a k-step audit the claim is the
k-fold composition of the recorded per-step claim; reading the directory recomputes that
composition (√k·μ, or the PLD of k Laplace steps) and refuses a claim that is not it (exit 3).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from dp_audit.errors import IntegrityError
from dp_audit.records import Verdict

if TYPE_CHECKING:  # pragma: no cover
    from dp_audit.gate import GatePolicy, GateResult


def evaluate_step_audit(run_dir: str | Path, policy: "GatePolicy") -> "GateResult":
    from dp_audit.gate import GateResult
    from dp_audit.manifest import load_manifest
    from dp_audit.stepaudit import bounds
    from dp_audit.stepaudit.output import read_step_audit

    run_dir = Path(run_dir)
    res = read_step_audit(run_dir)  # every hash verified (exit 3 on a mismatch)
    claim = load_manifest(run_dir, verify=False)["claim"]
    eps, mu, delta = claim.get("epsilon"), claim.get("mu"), claim.get("delta")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0 and isinstance(delta, (int, float))
            and 0 < delta < 1):
        raise IntegrityError(f"{run_dir / 'manifest.json'}: the per-step claim needs a finite epsilon > 0 and "
                             f"0 < delta < 1, got {eps!r}, {delta!r}")
    if (eps, delta) != (res.claim_epsilon, res.delta) or mu != res.claim_mu:
        raise IntegrityError(f"{run_dir}: the claim differs between manifest.json and step_audit.json")
    methods = ("clopper-pearson", "gdp") if mu is not None else ("clopper-pearson",)
    a_each = policy.alpha / len(methods)
    estimates = []
    for method in methods:
        est = bounds.bound(res.scores_d0, res.scores_d1, method=method, alpha=a_each, delta=float(delta),
                           threshold=res.threshold, calibration=res.calibration_trials)
        estimates.append(dataclasses.replace(est, attack=res.construction,
                                             details={**est.details, "counted": True}))
    best = max(estimates, key=lambda e: e.epsilon_lb)
    refuted = best.epsilon_lb > float(eps) + policy.tolerance
    verdict = Verdict(status="fail" if refuted else "pass", claimed_epsilon=float(eps),
                      epsilon_lb_max=best.epsilon_lb, alpha=policy.alpha, alpha_per_test=a_each,
                      n_tests=len(methods), tolerance=policy.tolerance, best_attack=res.construction,
                      best_method=best.method, threat_model="step-level")
    manifest = load_manifest(run_dir, verify=False)
    return GateResult(verdict=verdict, estimates=estimates, policy=policy, run_id=manifest.get("run_id"),
                      claimed_delta=float(delta),
                      warnings=(("step-level audit: the claim is per step (one release of the construction "
                                 f"{res.construction!r}), not the whole run's ε",) if res.steps == 1 else
                                (f"step-level audit of {res.steps} consecutive steps: the claim is the composition "
                                 f"of {res.steps} per-step claims ({(res.composition or {}).get('accountant')}) "
                                 f"of the construction {res.construction!r}, not the whole run's ε",)))
