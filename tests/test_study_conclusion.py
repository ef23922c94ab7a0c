"""The study's table and conclusion follow from the numbers (issue 17, docs/awp-leak.md "The study")."""

from __future__ import annotations

from dp_audit.study.conclusion import conclusion
from dp_audit.study.render import render_markdown, table_rows
from dp_audit.study.row import ArmRow, SweepRow
from dp_audit.study.runner import StudyResult, best_mia, whitebox_eps_lb

STEP_CLAIM = 4.38


def arm(name, group, *, step_lb, bb_lb=0.0, wb_lb=None, claimed=1.0, component=""):
    return ArmRow(name=name, label=name, group=group, component=component, claimed_epsilon=claimed,
                  step_constructions=(f"{name}-c",), step_claim_epsilon=STEP_CLAIM, step_eps_lb=step_lb,
                  step_refuted=step_lb > STEP_CLAIM, blackbox_eps_lb=bb_lb, blackbox_refuted=bb_lb > claimed,
                  whitebox_eps_lb=wb_lb, mia_auc=0.5, mia_tpr_at_1pct_fpr=0.01, test_accuracy=0.6)


def controls():
    return [arm("dpsgd", "control", step_lb=4.1), arm("dpzo", "control", step_lb=4.0)]


def test_paper_refutes_private_does_not_conclusion_says_private_fixes_it():
    """Bug caught: a conclusion written by hand (or computed from the wrong group) that does not
    follow the numbers; here paper refutes at the step level only, private never refutes."""
    rows = controls() + [arm("awp-paper", "paper", step_lb=39.6, component="AWP"),
                         arm("dpsat", "private", step_lb=4.1)]
    text = "\n".join(conclusion(rows))
    assert "Controls hold" in text
    assert "DP-Flat paper mode, AWP: refutes its claim at the step level (ε_LB 39.60 > per-step claim 4.38" in text
    assert "end-to-end black-box" not in text  # black-box did not refute: it must not be said to
    assert "The private variants fix it" in text and "NOT" not in text
    assert "black-box one-run audit refutes no arm (largest ε_LB 0.00): the leak of awp-paper is seen only" in text


def test_private_refutes_paper_does_not_conclusion_says_the_reverse():
    """Bug caught: a conclusion that always says "the private variants fix it" (or always blames
    paper mode) whatever the numbers say; here only the private arm refutes, end to end black-box."""
    rows = controls() + [arm("awp-paper", "paper", step_lb=4.0, component="AWP"),
                         arm("dpsat", "private", step_lb=4.0, bb_lb=2.5)]
    text = "\n".join(conclusion(rows))
    assert "DP-Flat paper mode, AWP: no refutation" in text
    assert "The private variants do NOT fix it: dpsat refutes its claim at the end-to-end black-box" in text
    assert "fix it:" not in text.replace("do NOT fix it:", "")
    assert "refutes no arm" not in text  # dpsat's black-box bound refutes: the "nothing end to end" line is false


def test_a_refuting_control_is_a_warning_not_a_finding():
    """Bug caught: a control (DP-SGD) above its claim read as a finding about DP-Flat instead of
    a broken audit or trainer."""
    rows = [arm("dpsgd", "control", step_lb=5.0), arm("awp-paper", "paper", step_lb=39.6)]
    assert conclusion(rows)[0].startswith("WARNING: control(s) dpsgd")


def test_no_refutation_anywhere_does_not_claim_the_private_variants_fix_anything():
    """Bug caught: "the private variants fix it" said when nothing was broken to begin with."""
    rows = controls() + [arm("awp-paper", "paper", step_lb=1.0), arm("dpsat", "private", step_lb=1.0)]
    text = "\n".join(conclusion(rows))
    assert "does not show that they fix anything" in text and "fix it" not in text


def test_sweep_sentence_names_the_first_refuted_value():
    """Bug caught: the start of the refutation taken as the first value tried, or from an unsorted
    list, rather than the smallest value whose bound exceeds the claim."""
    sweeps = [SweepRow(name=f"l{v}", sweep="distill-lambda", construction="c", option="lam", value=v,
                       step_claim_epsilon=STEP_CLAIM, step_eps_lb=lb, step_refuted=lb > STEP_CLAIM)
              for v, lb in ((1.0, 40.0), (0.01, 3.0), (0.1, 12.0), (0.03, 4.0))]
    (line,) = conclusion([], sweeps)
    assert "starts at lam = 0.1 (ε_LB 12.00" in line and "every larger value" in line
    low = [SweepRow(name="g", sweep="awp-gamma", construction="c", option="gamma", value=v, step_claim_epsilon=1.0,
                    step_eps_lb=9.0, step_refuted=True) for v in (0.1, 1e-4)]
    (line,) = conclusion([], low)
    assert "already at the smallest value tried, gamma = 0.0001" in line


def test_table_cells_follow_the_numbers_and_dashes_for_missing():
    """Bug caught: a refuted bound not marked, a missing number printed as 0 (a white-box ε_LB that
    was never computed must read "-", not 0.00), or columns shifted."""
    rows = [arm("awp-paper", "paper", step_lb=39.6, bb_lb=0.0),
            ArmRow(name="x", label="x", group="control", claimed_epsilon=1.0)]
    cells = table_rows(rows)
    assert cells[0][4] == "**39.60** (refuted)" and cells[0][5] == "0.00" and cells[0][6] == "-"
    assert cells[1][2:] == ("-",) * 8
    wb = table_rows([arm("a", "paper", step_lb=1.0, wb_lb=1.8, claimed=1.0)])[0][6]
    assert wb == "**1.80** (refuted)"
    md = render_markdown(StudyResult(out=None, arms=tuple(rows), sweeps=(), computed=(), skipped=()), settings={})
    assert "| awp-paper | 1.00 | awp-paper-c | 4.38 | **39.60** (refuted) | 0.00 | - |" in md


def test_whitebox_and_mia_columns_read_audit_json():
    """Bug caught: the white-box column reading black-box estimates (or failing when there are none),
    and the MIA columns taking the first attack instead of the best."""
    audit = {"estimates": [{"method": "fdp", "epsilon_lb": 0.3, "threat_model": "black-box", "is_bound": True},
                           {"method": "steinke", "epsilon_lb": 1.9, "threat_model": "white-box", "is_bound": True},
                           {"method": "raw", "epsilon_lb": 7.0, "threat_model": "white-box", "is_bound": False}],
             "attacks": [{"auc": 0.55, "tpr_at_fpr": {"0.01": 0.02}}, {"auc": 0.61, "tpr_at_fpr": {"0.01": 0.05}}]}
    assert whitebox_eps_lb(audit) == 1.9
    assert whitebox_eps_lb({"estimates": audit["estimates"][:1]}) is None
    assert best_mia(audit) == (0.61, 0.05)


def _arm_of(name, group, results, *, bb_lb=0.0):
    """A row with per-construction step results {construction: ε_LB} (claim STEP_CLAIM)."""
    res = {c: {"eps_lb": lb, "claim_epsilon": STEP_CLAIM, "refuted": lb > STEP_CLAIM} for c, lb in results.items()}
    top = max(res.values(), key=lambda x: x["eps_lb"])
    return ArmRow(name=name, label=name, group=group, claimed_epsilon=1.0, step_constructions=tuple(results),
                  step_claim_epsilon=STEP_CLAIM, step_eps_lb=top["eps_lb"], step_refuted=top["refuted"],
                  blackbox_eps_lb=bb_lb, blackbox_refuted=bb_lb > 1.0, step_results=res)


def test_per_component_conclusion_one_component_fixed_one_not():
    """Bug caught: the aggregate "the private variants fix it / do not" standing for every component:
    here AWP's replacements hold, sparse selection's holds, and distillation's public teacher
    refutes inside the two-component "public" arm, so only distillation is "NOT fixed" (a conclusion
    from the arm's max would blame sparse selection too, or call everything fixed)."""
    rows = controls() + [
        _arm_of("paper-awp", "paper", {"dpflat-awp-paper": 39.6}),
        _arm_of("paper-sparse", "paper", {"dpflat-sparse-paper": 40.0}),
        _arm_of("paper-distill", "paper", {"dpflat-distill-paper": 6.3}),
        _arm_of("paper-all", "paper", {"dpflat-awp-paper": 41.0, "dpflat-sparse-paper": 2.0,
                                       "dpflat-distill-paper": 3.0}),
        _arm_of("dpsat", "private", {"dpflat-awp-dpsat": 4.1}),
        _arm_of("per-example", "private", {"dpflat-awp-per-example": 4.0}),
        _arm_of("public", "private", {"dpflat-sparse-public": 4.2, "dpflat-distill-public": 5.0}),
    ]
    lines = conclusion(rows)
    awp = next(x for x in lines if x.startswith("AWP:"))
    sparse = next(x for x in lines if x.startswith("sparse selection:"))
    distill = next(x for x in lines if x.startswith("distillation:"))
    assert "ε_LB 39.60 > per-step claim 4.38" in awp  # the component alone, not the all-three arm's 41
    assert "DP-SAT AWP: not refuted (ε_LB 4.10 ≤" in awp and "per-example AWP: not refuted (ε_LB 4.00 ≤" in awp
    assert awp.endswith("fixes it at every threat model audited.")
    assert "layer selection on public data: not refuted (ε_LB 4.20 ≤" in sparse and "fixes it" in sparse
    assert "teacher trained on public data: refuted at the step level (ε_LB 5.00 >" in distill
    assert distill.endswith("NOT fixed by every private replacement.") and "fixes it at every" not in distill


def test_per_component_end_to_end_refutation_of_a_shared_arm_is_not_attributed():
    """Bug caught: an end-to-end refutation of the two-component public arm credited to (or hidden
    from) one component; a single-component arm's end-to-end refutation not reported."""
    rows = [_arm_of("paper-sparse", "paper", {"dpflat-sparse-paper": 40.0}),
            _arm_of("public", "private", {"dpflat-sparse-public": 4.2, "dpflat-distill-public": 4.0}, bb_lb=2.0),
            _arm_of("dpsat", "private", {"dpflat-awp-dpsat": 4.1}, bb_lb=3.0)]
    lines = conclusion(rows)
    sparse = next(x for x in lines if x.startswith("sparse selection:"))
    assert "not attributable to this component" in sparse and "not shown to be fixed" in sparse
    assert "NOT fixed" not in sparse  # nothing shows the sparse replacement itself broken
    awp = next(x for x in lines if x.startswith("AWP"))
    assert "DP-SAT AWP: not refuted (ε_LB 4.10 ≤ per-step claim 4.38); refuted end to end" in awp
    assert "(paper mode not audited)" in awp and "per-example AWP: not audited" in awp


def test_an_unaudited_replacement_is_not_called_a_failure():
    """Bug caught (review of issue 17): with the paper component refuted and one replacement not
    audited (the other unrefuted), the line ended "NOT fixed by every private replacement", a
    finding the study never made; and an unattributable end-to-end refutation (previous test)
    read the same way. Now "NOT fixed" needs a refuted replacement; otherwise "not shown to be
    fixed". Seen failing (the line said "NOT fixed") before the three-way status in
    component_lines."""
    rows = [_arm_of("paper-awp", "paper", {"dpflat-awp-paper": 39.6}),
            _arm_of("dpsat", "private", {"dpflat-awp-dpsat": 4.1})]
    awp = next(x for x in conclusion(rows) if x.startswith("AWP:"))
    assert "per-example AWP: not audited" in awp
    assert "NOT fixed" not in awp and "fixes it at every" not in awp and "not shown to be fixed" in awp
    rows.append(_arm_of("per-example", "private", {"dpflat-awp-per-example": 9.0}))  # refuted: broken
    awp = next(x for x in conclusion(rows) if x.startswith("AWP:"))
    assert awp.endswith("NOT fixed by every private replacement.")
