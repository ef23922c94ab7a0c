"""The result of a step-level audit, and its JSON form (``step_audit.json``).

``verdict`` has the shape of the gate's :class:`~dp_audit.records.Verdict` (status "fail" =
refuted), so a gate can read a step-audit directory without recomputing anything: claim,
largest counted ε_LB, α, α per test and the number of tests the maximum was taken over.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dp_audit import SCHEMA_VERSION
from dp_audit.records import EpsilonEstimate, Verdict

KIND = "step-audit"


@dataclass(frozen=True)
class StepAuditResult:
    construction: str
    description: str
    trials: int  # per side (d0 and d1 each)
    calibration_trials: int  # per side; 0 with the bonferroni strategy
    alpha: float
    delta: float
    seed: int
    threshold: str
    claim_epsilon: float
    claim_mu: float | None
    estimates: tuple[EpsilonEstimate, ...]  # one per estimator; details.counted says whether it counts
    eps_lb: float  # the largest counted bound
    refuted: bool
    verdict: Verdict
    timings: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    scores_d0: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    scores_d1: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    steps: int = 1  # consecutive steps per trial; the claim is their composition
    composition: dict[str, Any] | None = None  # k > 1: per-step claim, accountant (compose.ComposedClaim.to_dict)

    @property
    def eps_lb_by_method(self) -> dict[str, float]:
        return {e.method: e.epsilon_lb for e in self.estimates}

    @property
    def tightness(self) -> float:
        """ε_LB / claimed ε (the audit's power when the claim is the true ε)."""
        return self.eps_lb / self.claim_epsilon if self.claim_epsilon > 0 else float("nan")

    def claim_dict(self) -> dict[str, Any]:
        """The claim as step_audit.json and manifest.json record it: per step (k = 1, the
        single-step format), or the composition of ``steps`` steps with the per-step claim."""
        c = {"epsilon": self.claim_epsilon, "delta": self.delta, "mu": self.claim_mu, "per": "step"}
        if self.steps > 1:
            comp = dict(self.composition or {})
            c.update(per=f"{self.steps} steps", steps=self.steps, per_step=comp.get("per_step"),
                     composition=comp.get("accountant"), pld_epsilon=comp.get("pld_epsilon"))
        return c

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "threat_model": "step-level",
            "construction": {"name": self.construction, "description": self.description, "info": self.info},
            "trials": {"per_side": self.trials, "calibration_per_side": self.calibration_trials,
                       "test_per_side": self.trials - self.calibration_trials},
            "threshold": self.threshold,
            "alpha": self.alpha,
            "delta": self.delta,
            "seed": self.seed,
            "claim": self.claim_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
            "eps_lb": self.eps_lb,
            "refuted": self.refuted,
            "verdict": self.verdict.to_dict(),
            "timings": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepAuditResult":
        c = data["construction"]
        return cls(construction=c["name"], description=c.get("description", ""), trials=data["trials"]["per_side"],
                   calibration_trials=data["trials"]["calibration_per_side"], alpha=data["alpha"],
                   delta=data["delta"], seed=data["seed"], threshold=data["threshold"],
                   claim_epsilon=data["claim"]["epsilon"], claim_mu=data["claim"].get("mu"),
                   estimates=tuple(EpsilonEstimate.from_dict(e) for e in data["estimates"]),
                   eps_lb=data["eps_lb"], refuted=data["refuted"], verdict=Verdict.from_dict(data["verdict"]),
                   timings=data.get("timings", {}), info=c.get("info") or {}, **_steps_of(data["claim"]))

    def with_scores(self, d0: np.ndarray, d1: np.ndarray) -> "StepAuditResult":
        return dataclasses.replace(self, scores_d0=d0, scores_d1=d1)


def _steps_of(claim: dict[str, Any]) -> dict[str, Any]:
    steps = claim.get("steps", 1)
    if steps == 1:
        return {"steps": 1, "composition": None}
    return {"steps": steps, "composition": {"steps": steps, "accountant": claim.get("composition"),
                                            "per_step": claim.get("per_step"), "pld_epsilon": claim.get("pld_epsilon")}}


def summary_line(res: StepAuditResult) -> str:
    """One line: claim, ε_LB per estimator, verdict. When the largest bound is the GDP one, the
    line also gives the largest bound valid for any mechanism: the GDP number is the ε of μ_LB-GDP,
    a lower bound only if the step is μ-GDP (it refutes the μ-GDP claim either way)."""
    def tag(e: EpsilonEstimate) -> str:
        if not e.details.get("counted"):
            return " (not counted)"
        mu = e.details.get("mu_lb")
        return f" (μ_LB={mu:.3g})" if e.method == "gdp" and mu is not None else ""

    per = ", ".join(f"{e.method} {e.epsilon_lb:.3f}{tag(e)}" for e in res.estimates)
    word = "REFUTED" if res.refuted else "not refuted"
    what = "per-step claim" if res.steps == 1 else f"claim of {res.steps} composed steps"
    line = (f"{res.construction}: {what} ε={res.claim_epsilon:.3f} (δ={res.delta:g}"
            + (f", μ={res.claim_mu:.3g}" if res.claim_mu is not None else "")
            + f"); ε_LB = {res.eps_lb:.3f} at {100 * (1 - res.alpha):g}% ({per}); {res.trials} trials per side; {word}")
    best = max(res.estimates, key=lambda e: e.epsilon_lb, default=None)
    if best is not None and best.details.get("validity"):
        free = [e.epsilon_lb for e in res.estimates if not e.details.get("validity")]
        line += (f"; the {best.method} bound is {best.details['validity']}"
                 + (f" (for any mechanism: ε_LB = {max(free):.3f})" if free else ""))
    return line


__all__ = ["KIND", "StepAuditResult", "summary_line"]
