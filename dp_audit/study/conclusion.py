"""The study's conclusion, computed from the rows alone (no prose is written by hand).

A claim is refuted at a threat model when that threat model's ε_LB (a 95% lower bound) exceeds
the claim it is compared with: the per-step claim at the step level, the run's claimed ε end to end.
"""

from __future__ import annotations

from typing import Sequence

from dp_audit.study.row import ArmRow, SweepRow

SWEEP_NAMES = {"awp-gamma": "AWP radius γ", "distill-lambda": "distillation weight λ"}

# Each non-private component of DP-Flat's paper mode, the step construction that audits it, and
# the constructions of its private replacements (docs/awp-leak.md "The constructions").
COMPONENTS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("AWP", "dpflat-awp-paper", (("dpflat-awp-dpsat", "DP-SAT AWP"), ("dpflat-awp-per-example", "per-example AWP"))),
    ("sparse selection", "dpflat-sparse-paper", (("dpflat-sparse-public", "layer selection on public data"),)),
    ("distillation", "dpflat-distill-paper", (("dpflat-distill-public", "teacher trained on public data"),)),
)


def _gt(lb: float | None, claim: float | None) -> bool:
    return lb is not None and claim is not None and lb > claim


def refutations(row: ArmRow) -> list[str]:
    """Each threat model at which this arm refutes its claim, with the numbers."""
    out = []
    if row.step_refuted:
        by = f"{row.step_eps_lb:.2f} > per-step claim {row.step_claim_epsilon:.2f}"
        out.append(f"step level (ε_LB {by}, by {row.step_eps_lb - row.step_claim_epsilon:.2f})")
    if row.blackbox_refuted:
        out.append(f"end-to-end black-box (ε_LB {row.blackbox_eps_lb:.2f} > claimed {row.claimed_epsilon:.2f})")
    if _gt(row.whitebox_eps_lb, row.claimed_epsilon):
        out.append(f"end-to-end white-box (ε_LB {row.whitebox_eps_lb:.2f} > claimed {row.claimed_epsilon:.2f})")
    return out


def _not_refuted(row: ArmRow) -> str:
    parts = []
    if row.step_eps_lb is not None:
        parts.append(f"step ε_LB {row.step_eps_lb:.2f} ≤ {row.step_claim_epsilon:.2f}")
    if row.blackbox_eps_lb is not None:
        parts.append(f"black-box ε_LB {row.blackbox_eps_lb:.2f} ≤ {row.claimed_epsilon:.2f}")
    if row.whitebox_eps_lb is not None and row.claimed_epsilon is not None:
        parts.append(f"white-box ε_LB {row.whitebox_eps_lb:.2f} ≤ {row.claimed_epsilon:.2f}")
    return "; ".join(parts) or "no bound computed"


def sweep_sentence(rows: Sequence[SweepRow]) -> str:
    rows = sorted(rows, key=lambda r: r.value)
    name = SWEEP_NAMES.get(rows[0].sweep, rows[0].sweep)
    span = f"{rows[0].value:g} … {rows[-1].value:g}"
    alphas = {r.alpha for r in rows if r.alpha is not None}
    span += (f"; each of the {len(rows)} points at α = {alphas.pop():.4g}, the family at {sum(r.alpha for r in rows):.3g}"
             if len(alphas) == 1 and all(r.alpha is not None for r in rows) else "")
    refuted = [r for r in rows if r.step_refuted]
    if not refuted:
        return f"{name} ({span}): the step-level audit refutes the per-step claim at no value tried."
    first = refuted[0]
    monotone = all(r.step_refuted for r in rows if r.value >= first.value)
    tail = "and at every larger value" if monotone else "but not at every larger value"
    where = ("already at the smallest value tried, " if first is rows[0] else "the step-level refutation starts at ")
    return (f"{name} ({span}): {where}{first.option} = {first.value:g} "
            f"(ε_LB {first.step_eps_lb:.2f} > per-step claim {first.step_claim_epsilon:.2f}) {tail}.")


def step_result(rows: Sequence[ArmRow], construction: str) -> tuple[dict, ArmRow] | None:
    """The step-level result of ``construction`` in ``rows`` (and its row): from the row's
    per-construction results, preferring a row that runs it alone; a row of that single
    construction without per-construction results gives its own step numbers."""
    found = []
    for r in rows:
        res = (r.step_results or {}).get(construction)
        if res is None and tuple(r.step_constructions) == (construction,) and r.step_eps_lb is not None:
            res = {"eps_lb": r.step_eps_lb, "claim_epsilon": r.step_claim_epsilon, "refuted": bool(r.step_refuted)}
        if res is not None:
            found.append((len(r.step_constructions) != 1, res, r))
    if not found:
        return None
    _, res, r = min(found, key=lambda t: t[0])
    return res, r


def _num(res: dict) -> str:
    op = ">" if res["refuted"] else "≤"
    return f"ε_LB {res['eps_lb']:.2f} {op} per-step claim {res['claim_epsilon']:.2f}"


def _end_to_end(row: ArmRow) -> list[str]:
    return [t for t in refutations(row) if not t.startswith("step level")]


def component_lines(arms: Sequence[ArmRow]) -> list[str]:
    """Per non-private component: is the paper component refuted, and is each private replacement
    (refuted at the step level by its own construction; end to end when its arm is refuted and
    holds only this component's replacement)?"""
    paper = [r for r in arms if r.group == "paper"]
    private = [r for r in arms if r.group == "private"]
    own = {c for _, _, reps in COMPONENTS for c, _ in reps}
    lines = []
    for component, paper_c, reps in COMPONENTS:
        p = step_result(paper, paper_c)
        parts, status = [], []  # status per replacement: "fixed", "broken" (refuted) or "unknown"
        for c, label in reps:
            found = step_result(private, c)
            if found is None:
                parts.append(f"{label}: not audited")
                status.append("unknown")
                continue
            res, row = found
            e2e = _end_to_end(row)
            shared = [x for x in row.step_constructions if x != c and x in own]
            if e2e and not shared:
                verdict = f"refuted end to end ({'; '.join(e2e)})"
            elif e2e:
                verdict = (f"its arm ({row.label}, with {', '.join(shared)}) is refuted end to end "
                           f"({'; '.join(e2e)}), not attributable to this component")
            else:
                verdict = ""
            step = f"refuted at the step level ({_num(res)})" if res["refuted"] else f"not refuted ({_num(res)})"
            parts.append(f"{label}: {step}" + (f"; {verdict}" if verdict else ""))
            status.append("broken" if res["refuted"] or (e2e and not shared) else ("unknown" if e2e else "fixed"))
        if p is None:
            head = f"{component} (paper mode not audited)"
            tail = ""
        elif p[0]["refuted"]:
            head = f"{component}: the paper-mode component refutes its claim ({_num(p[0])})"
            # "NOT fixed" only when a replacement is itself refuted; a replacement not audited, or
            # inside an arm refuted end to end with another component's replacement, is unknown
            tail = (" — NOT fixed by every private replacement" if "broken" in status else
                    " — the private replacement fixes it at every threat model audited" if set(status) == {"fixed"}
                    else " — not shown to be fixed by every private replacement (one is not audited, or its arm's "
                         "end-to-end refutation is not attributable)")
        else:
            head = f"{component}: the paper-mode component is not refuted here ({_num(p[0])})"
            tail = " — so this study does not show that a replacement fixes anything"
        lines.append(f"{head}; replaced by {'; '.join(parts)}{tail}.")
    return lines


def arm_tests(arms: Sequence[ArmRow]) -> int:
    """How many α-level tests the arms' rows hold: an arm's step-level bound (its k constructions
    at α/k) is one test, its end-to-end bounds (black-box and white-box, α split over the gate's
    attacks × estimators) another; an arm with neither recorded counts as one."""
    return sum(max(1, int(r.step_eps_lb is not None)
                   + int(r.blackbox_eps_lb is not None or r.whitebox_eps_lb is not None)) for r in arms)


def per_arm_alpha_sentence(n_arms: int, alpha: float, *, n_tests: int | None = None, computed: bool = False) -> str:
    """Each statement of the table is its own test at α: said plainly, with the family-wise risk
    of the ``n_tests`` tests (default ``n_arms``; :func:`arm_tests`) it implies."""
    n = int(n_tests if n_tests is not None else n_arms)
    fw = 1 - (1 - alpha) ** n
    return (f"Confidence: each arm's step-level bound is its own test at α = {alpha:g} (its k step constructions "
            f"at α/k each), and so are its end-to-end bounds (α split over the gate's attacks × estimators). "
            f"These {n} tests over {n_arms} arms are not one family: if every arm kept its claim, some statement "
            f"could still read as a refutation by chance with probability up to 1 − (1 − α)^{n} = {fw:.0%}; for a "
            f"statement about all arms at once, read a refutation as family-wise only if its bound would also "
            f"exceed the claim at α/{n} = {alpha / n:.3g} (Bonferroni; "
            + ("computed below)." if computed else "not computed here)."))


def conclusion(arms: Sequence[ArmRow], sweeps: Sequence[SweepRow] = (), *, alpha: float | None = None,
               familywise=None) -> list[str]:
    """Plain sentences: what each non-private component does to the claim, whether the private
    variants fix it, whether the controls hold, and where the sweeps start refuting; with
    ``alpha``, the per-arm confidence stated plainly (:func:`per_arm_alpha_sentence`) and, with
    ``familywise`` (:func:`dp_audit.study.familywise.familywise_steps`), last, what holds for all
    arms at once."""
    lines: list[str] = []
    controls = [r for r in arms if r.group == "control"]
    paper = [r for r in arms if r.group == "paper"]
    private = [r for r in arms if r.group == "private"]
    bad_controls = [r for r in controls if refutations(r)]
    if bad_controls:
        lines.append("WARNING: control(s) " + ", ".join(f"{r.label} ({'; '.join(refutations(r))})" for r in bad_controls)
                     + " refute a claim they satisfy by construction: the audit or the trainer is broken, "
                       "and nothing below can be trusted.")
    elif controls:
        lines.append("Controls hold: " + ", ".join(r.label for r in controls)
                     + " stay within their claims at every threat model audited.")
    broken = [r for r in paper if refutations(r)]
    for r in paper:
        what = r.component or r.label
        if refutations(r):
            lines.append(f"DP-Flat paper mode, {what}: refutes its claim at the " + "; at the ".join(refutations(r))
                         + ".")
        else:
            lines.append(f"DP-Flat paper mode, {what}: no refutation ({_not_refuted(r)}).")
    bad_private = [r for r in private if refutations(r)]
    names = ", ".join(r.label for r in private)
    if bad_private:
        lines.append("The private variants do NOT fix it: " + "; ".join(
            f"{r.label} refutes its claim at the {'; at the '.join(refutations(r))}" for r in bad_private) + ".")
    elif private and broken:
        lines.append(f"The private variants fix it: none of {names} refutes its claim at any threat model audited, "
                     f"where the paper-mode component(s) {', '.join(r.component or r.label for r in broken)} do.")
    elif private:
        lines.append(f"No private variant ({names}) refutes its claim; as no paper-mode component did either, "
                     f"this study does not show that they fix anything.")
    if paper or private:
        lines.extend(component_lines(arms))
    bb = [r.blackbox_eps_lb for r in arms if r.blackbox_eps_lb is not None]
    if bb and not any(r.blackbox_refuted for r in arms):
        seen = [r.label for r in arms if r.step_refuted]
        lines.append(f"End to end, the black-box one-run audit refutes no arm (largest ε_LB {max(bb):.2f})"
                     + (f": the leak of {', '.join(seen)} is seen only in DP's own threat model (step level)."
                        if seen else "."))
    wb = [r.whitebox_eps_lb for r in arms if r.whitebox_eps_lb is not None]
    if wb and not any(_gt(r.whitebox_eps_lb, r.claimed_epsilon) for r in arms):
        lines.append(f"End to end, the white-box one-run audit (Dirac gradient canaries) refutes no arm either "
                     f"(largest ε_LB {max(wb):.2f}, {len(wb)} arms): its canaries own coordinates no real example "
                     f"touches, so it audits the noised clipped sum on those coordinates only; a leak that acts "
                     f"through the other examples' gradients (AWP's v, the layer selection, the teacher) is "
                     f"invisible to it by construction (docs/whitebox.md).")
    by_sweep: dict[str, list[SweepRow]] = {}
    for s in sweeps:
        by_sweep.setdefault(s.sweep, []).append(s)
    lines.extend(sweep_sentence(rows) for rows in by_sweep.values())
    if alpha is not None and len(arms) > 1:
        lines.append(per_arm_alpha_sentence(len(arms), float(alpha), n_tests=arm_tests(arms),
                                            computed=familywise is not None))
        if familywise is not None:
            from dp_audit.study.familywise import familywise_sentence

            lines.append(familywise_sentence(familywise, arms))
    return lines
