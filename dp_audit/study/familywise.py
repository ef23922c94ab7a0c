"""The study's family-wise reading, computed rather than stated.

Each arm's step-level bound is its own test at α (its k constructions at α/k each), and so are its
end-to-end bounds; across the N tests of the table (:func:`dp_audit.study.conclusion.arm_tests`)
some refutation could appear by chance with probability up to 1 − (1 − α)^N. For a statement about
all arms at once, every test must hold at α/N (Bonferroni). The step-level bounds at that level are
recomputed here from each construction's recorded trials (``arms/<arm>/step/<construction>``, read
hash-checked), with the same estimators, threshold strategy and calibration split as the audit
itself, at α/(N·k) per construction (and that split over the counted estimators). Each of these
is a valid test at its level (the calibration step picks its rule from the calibration trials
alone, at the level asked), so by the union bound all of them hold at once with probability
≥ 1 − α: a refutation at α/(N·k) holds family-wise; a per-arm refutation that does not survive is a
per-arm finding only. A bound at the smaller α is *usually*, not always, smaller: the calibration
step ranks its candidate rules at the smaller level too and may choose another threshold (seen on
simulated Gaussian scores, 2 of 600 bounds larger by up to 0.15), so an arm can refute at
α/(N·k) and not at its per-arm α; the sentence names such an arm apart. End-to-end bounds are not
recomputed (they come from the gate over saved scores of several attacks); the conclusion says so
when one of them refutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.study.row import ArmRow


@dataclass(frozen=True)
class FamilywiseStep:
    arm: str
    label: str
    eps_lb: float  # max over the arm's constructions, each at alpha_each
    claim_epsilon: float  # the per-step claim of the construction with the largest excess
    refuted: bool  # some construction's bound exceeds its claim at alpha_each
    per_arm_refuted: bool  # the row's own (α-level) verdict
    alpha_each: float  # α/(N·k): each construction's share

    def to_dict(self) -> dict:
        return {"arm": self.arm, "eps_lb": self.eps_lb, "claim_epsilon": self.claim_epsilon, "refuted": self.refuted,
                "per_arm_refuted": self.per_arm_refuted, "alpha_each": self.alpha_each}


@dataclass(frozen=True)
class Familywise:
    n_tests: int
    alpha: float  # the family's α (each test at alpha / n_tests)
    steps: tuple[FamilywiseStep, ...]
    missing: tuple[str, ...]  # arms with step results whose trials are absent or unreadable (not recomputed)

    def to_dict(self) -> dict:
        return {"n_tests": self.n_tests, "alpha": self.alpha, "alpha_per_test": self.alpha / self.n_tests,
                "correction": "bonferroni", "steps": [s.to_dict() for s in self.steps], "missing": list(self.missing)}


def step_eps_lb_at(res, alpha: float) -> float:
    """The step audit's ε_LB recomputed from its trials at confidence 1 − ``alpha``: the max of its
    counted estimators (dp_audit.stepaudit.output.recompute_bounds)."""
    from dp_audit.stepaudit.output import recompute_bounds

    return max(recompute_bounds(res, alpha).values())


def familywise_steps(out: str | Path, arms: Sequence[ArmRow], *, alpha: float) -> Familywise:
    """Every arm's step-level bound at the family's level (module docstring)."""
    from dp_audit.study.conclusion import arm_tests
    from dp_audit.stepaudit.output import read_step_audit

    n = arm_tests(arms)
    steps, missing = [], []
    for row in arms:
        names = tuple(row.step_constructions)
        if row.step_eps_lb is None or not names:
            continue
        dirs = [Path(out) / "arms" / row.name / "step" / c for c in names]
        if not all(d.is_dir() for d in dirs):
            missing.append(row.name)
            continue
        a_each = float(alpha) / (n * len(names))
        found = []
        try:
            for d in dirs:
                res = read_step_audit(d)  # hash-checked: a changed trials file is an IntegrityError
                found.append((step_eps_lb_at(res, a_each), float(res.claim_epsilon)))
        except (IntegrityError, UsageError):
            # not a complete step audit (a placeholder of an arm that failed or was interrupted, a
            # changed file): named as not recomputed, never read as a result, never a crash here
            missing.append(row.name)
            continue
        lb, claim = max(found, key=lambda t: t[0] - t[1])
        steps.append(FamilywiseStep(arm=row.name, label=row.label, eps_lb=lb, claim_epsilon=claim,
                                    refuted=any(b > c for b, c in found), per_arm_refuted=bool(row.step_refuted),
                                    alpha_each=a_each))
    return Familywise(n_tests=n, alpha=float(alpha), steps=tuple(steps), missing=tuple(missing))


def familywise_sentence(fw: Familywise, arms: Sequence[ArmRow]) -> str:
    """What holds for all arms at once, with the numbers."""
    held = [s for s in fw.steps if s.refuted and s.per_arm_refuted]
    lost = [s for s in fw.steps if s.per_arm_refuted and not s.refuted]
    # valid at α/(N·k), but the row's own verdict (at α/k) does not refute: the calibration step
    # chose another threshold at the smaller level (module docstring); never read as "the
    # refutation of X holds" for an arm whose table row says it is not refuted
    only = [s for s in fw.steps if s.refuted and not s.per_arm_refuted]
    by_arm = {r.name: r for r in arms}
    head = (f"Family-wise (computed; Bonferroni over the {fw.n_tests} tests, each at α/{fw.n_tests} = "
            f"{fw.alpha / fw.n_tests:.3g}, the step bounds recomputed from the recorded trials): ")
    parts = []
    if held:
        parts.append("the step-level refutations of " + ", ".join(
            f"{s.label} (ε_LB {s.eps_lb:.2f} > {s.claim_epsilon:.2f})" for s in held) + " hold for all arms at once")
    if lost:
        parts.append("those of " + ", ".join(f"{s.label} (ε_LB {s.eps_lb:.2f} ≤ {s.claim_epsilon:.2f})" for s in lost)
                     + " do not: they are per-arm findings only")
    if only:
        parts.append(", ".join(f"{s.label} (ε_LB {s.eps_lb:.2f} > {s.claim_epsilon:.2f})" for s in only)
                     + " refute(s) at the family level although not at the per-arm α (the calibration step "
                       "chose another threshold at the smaller α): a family-wise refutation the table does not show")
    if not held and not lost and not only:
        parts.append(("no recomputed step-level bound refutes its claim" if fw.missing else
                      "no step-level bound refutes its claim") if fw.steps else "no step-level bound was recomputed")
    if fw.missing:
        # an arm refuted per arm whose trials could not be read is not "no refutation": say so
        parts.append("not recomputed (trials absent or unreadable): " + ", ".join(
            f"{a} (refuted per arm; not checked family-wise)" if a in by_arm and by_arm[a].step_refuted else a
            for a in fw.missing))
    e2e = [r.label for r in arms if r.blackbox_refuted
           or (r.whitebox_eps_lb is not None and r.claimed_epsilon is not None and r.whitebox_eps_lb > r.claimed_epsilon)]
    if e2e:
        parts.append(f"the end-to-end refutations ({', '.join(e2e)}) are per-arm findings (not recomputed at α/"
                     f"{fw.n_tests})")
    return head + "; ".join(parts) + "."


__all__ = ["Familywise", "FamilywiseStep", "familywise_sentence", "familywise_steps", "step_eps_lb_at"]
