"""The study's family-wise reading (dp_audit/study/familywise.py): the step-level bounds recomputed
from the recorded trials at α/N (Bonferroni over the table's N tests)."""

from __future__ import annotations

import pytest

from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build
from dp_audit.stepaudit.output import read_step_audit
from dp_audit.study.familywise import familywise_sentence, familywise_steps, step_eps_lb_at
from dp_audit.study.row import ArmRow

ALPHA = 0.05


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two arms with real step-audit directories where the study puts them: the DP-SGD Dirac
    control (keeps its claim) and paper-mode AWP (refutes it by an order of magnitude)."""
    out = tmp_path_factory.mktemp("study")
    rows = []
    for name, cons, group in (("control", "dpsgd-dirac", "control"), ("awp", "dpflat-awp-paper", "paper")):
        res = step_audit(build(cons), trials=2000, seed=7, progress=False, out=out / "arms" / name / "step" / cons)
        rows.append(ArmRow(name=name, label=name.upper(), group=group, claimed_epsilon=1.0, step_constructions=(cons,),
                           step_claim_epsilon=res.claim_epsilon, step_eps_lb=res.eps_lb, step_refuted=res.refuted,
                           blackbox_eps_lb=0.0, blackbox_refuted=False))
    return out, rows


def test_recomputed_bounds_reproduce_the_audit_and_shrink_at_the_family_level(study):
    """Bugs caught: the recomputation using other estimators, another α split, δ or calibration
    split than the audit (it would not give back the audit's own ε_LB at the audit's α); the family
    level left at α instead of α/(N·k) (the AWP bound would not shrink); N counting one test per
    arm instead of the step and end-to-end tests (alpha_each 0.025 instead of 0.0125)."""
    out, rows = study
    for row in rows:
        res = read_step_audit(out / "arms" / row.name / "step" / row.step_constructions[0])
        assert step_eps_lb_at(res, res.alpha) == pytest.approx(res.eps_lb, rel=1e-12)
    fw = familywise_steps(out, rows, alpha=ALPHA)
    assert fw.n_tests == 4 and not fw.missing
    by = {s.arm: s for s in fw.steps}
    assert all(s.alpha_each == pytest.approx(ALPHA / 4) for s in fw.steps)
    awp = by["awp"]
    assert awp.refuted and awp.per_arm_refuted and awp.eps_lb < rows[1].step_eps_lb  # smaller α, smaller bound
    assert not by["control"].refuted and by["control"].eps_lb <= rows[0].step_eps_lb
    text = familywise_sentence(fw, rows)
    assert "α/4 = 0.0125" in text and "AWP (ε_LB" in text and "hold for all arms at once" in text
    assert "CONTROL" not in text


def test_a_refutation_lost_at_the_family_level_is_called_per_arm(study, monkeypatch):
    """Bug caught: a per-arm refutation reported as family-wise although its bound at α/N no longer
    exceeds the claim (the sentence must move it to "per-arm findings only")."""
    from dp_audit.study import familywise

    out, rows = study
    monkeypatch.setattr(familywise, "step_eps_lb_at", lambda res, alpha: float(res.claim_epsilon) - 0.5)
    fw = familywise_steps(out, rows, alpha=ALPHA)
    text = familywise_sentence(fw, rows)
    assert not any(s.refuted for s in fw.steps)
    assert "those of AWP" in text and "per-arm findings only" in text and "hold for all arms" not in text


def test_arms_without_trials_on_disk_are_named_not_guessed(tmp_path):
    """Bug caught: an arm whose step directories are absent (a fake or partial study) silently
    counted as "holds" or "does not hold"; it must be listed as not recomputed."""
    rows = [ArmRow(name=f"a{i}", label=f"A{i}", group="paper", claimed_epsilon=1.0, step_constructions=("dpsgd-dirac",),
                   step_claim_epsilon=1.0, step_eps_lb=3.0, step_refuted=True) for i in range(2)]
    fw = familywise_steps(tmp_path, rows, alpha=ALPHA)
    assert fw.steps == () and fw.missing == ("a0", "a1")
    assert ("not recomputed (trials absent or unreadable): a0 (refuted per arm; not checked family-wise), "
            "a1 (refuted per arm; not checked family-wise)") in familywise_sentence(fw, rows)


def test_an_unreadable_step_directory_is_named_not_a_crash(study, tmp_path):
    """Bug caught (clean-clone CI of this change): a step directory that is not a complete step
    audit (the placeholder manifest of an arm that failed, a changed trials file) made writing the
    study's outputs raise IntegrityError, losing study.md/json for every other arm."""
    import shutil

    out, rows = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    trials = copy / "arms" / "awp" / "step" / "dpflat-awp-paper" / "trials.npz"
    trials.write_bytes(trials.read_bytes()[:-8] + b"tampered")
    fw = familywise_steps(copy, rows, alpha=ALPHA)
    assert fw.missing == ("awp",) and [s.arm for s in fw.steps] == ["control"]


def test_the_conclusion_ends_with_the_computed_family_wise_sentence(study):
    """Bug caught: the conclusion still saying "not computed here" when the family-wise bounds were
    computed, or dropping them."""
    from dp_audit.study.conclusion import conclusion

    out, rows = study
    lines = conclusion(rows, alpha=ALPHA, familywise=familywise_steps(out, rows, alpha=ALPHA))
    assert "computed below" in lines[-2] and lines[-1].startswith("Family-wise (computed;")
    assert "not computed here" in conclusion(rows, alpha=ALPHA)[-1]


def test_each_construction_of_a_k_construction_arm_is_at_alpha_over_n_times_k(study, tmp_path):
    """Bug caught (review rv19): the per-construction share left at α/N for an arm of k = 2
    constructions (its two bounds at α/N each: the arm's test at 2α/N, the family's union bound
    broken). Every other test has k = 1, where α/N and α/(N·k) coincide."""
    import shutil

    out, rows = study
    copy = tmp_path / "copy"
    for row in rows:  # the control arm as it is, and an arm running both constructions
        c = row.step_constructions[0]
        shutil.copytree(out / "arms" / row.name / "step" / c, copy / "arms" / row.name / "step" / c)
        shutil.copytree(out / "arms" / row.name / "step" / c, copy / "arms" / "both" / "step" / c)
    both = ArmRow(name="both", label="BOTH", group="paper", claimed_epsilon=1.0,
                  step_constructions=tuple(r.step_constructions[0] for r in rows),
                  step_claim_epsilon=rows[1].step_claim_epsilon, step_eps_lb=rows[1].step_eps_lb, step_refuted=True,
                  blackbox_eps_lb=0.0, blackbox_refuted=False)
    fw = familywise_steps(copy, [rows[0], both], alpha=ALPHA)
    assert fw.n_tests == 4
    by = {s.arm: s for s in fw.steps}
    assert by["control"].alpha_each == pytest.approx(ALPHA / 4)
    assert by["both"].alpha_each == pytest.approx(ALPHA / 8)
    awp = read_step_audit(copy / "arms" / "both" / "step" / rows[1].step_constructions[0])
    expected = step_eps_lb_at(awp, ALPHA / 8)
    assert expected != pytest.approx(step_eps_lb_at(awp, ALPHA / 4), rel=1e-6)  # the two levels differ here
    assert by["both"].eps_lb == pytest.approx(expected, rel=1e-12) and by["both"].refuted


def test_a_refutation_at_the_family_level_only_is_not_called_the_tables_refutation(study, monkeypatch):
    """Bug caught (review rv19): the calibration step may choose another threshold at α/(N·k), so
    an arm whose row is not refuted can refute at the family level; the sentence called that "the
    step-level refutation of X holds for all arms at once" about a refutation the table does not
    show. It must be named apart."""
    from dp_audit.study import familywise

    out, rows = study
    monkeypatch.setattr(familywise, "step_eps_lb_at", lambda res, alpha: float(res.claim_epsilon) + 1.0)
    fw = familywise_steps(out, rows, alpha=ALPHA)
    text = familywise_sentence(fw, rows)
    assert all(s.refuted for s in fw.steps) and not fw.steps[0].per_arm_refuted
    head, _, rest = text.partition("hold for all arms at once")
    assert "AWP (ε_LB" in head and "CONTROL" not in head
    assert "CONTROL (ε_LB" in rest and "although not at the per-arm α" in rest


def test_a_missing_arm_refuted_per_arm_is_not_read_as_no_refutation(study, tmp_path):
    """Bug caught (review rv19): with the only refuting arm's trials unreadable and the others
    not refuting, the sentence said "no step-level bound refutes its claim" — read as covering the
    refuting arm too — and named it only in a list of arms not recomputed."""
    import shutil

    out, rows = study
    copy = tmp_path / "copy"
    shutil.copytree(out / "arms" / "control", copy / "arms" / "control")  # awp's trials absent
    text = familywise_sentence(familywise_steps(copy, rows, alpha=ALPHA), rows)
    assert "no step-level bound refutes" not in text and "no recomputed step-level bound refutes its claim" in text
    assert "awp (refuted per arm; not checked family-wise)" in text


def test_a_smaller_alpha_can_give_a_larger_calibrated_bound():
    """The fact the family-wise sentence must allow for (review rv19): the calibration step ranks
    its rules at α·factor, so at α/8 it may choose another threshold whose bound on the test trials
    is larger than the per-arm one. Bug caught: code or docs relying on "a bound at a smaller α is
    never larger" (e.g. treating a family-level refutation as implying the per-arm one); with a
    fixed rule the bound is monotone, so the rule change is the only cause."""
    import numpy as np

    from dp_audit.stepaudit import bounds

    rng = np.random.default_rng(33)
    s0, s1 = rng.normal(0.0, 1.0, 1000), rng.normal(1.0, 1.0, 1000)
    kw = dict(method="clopper-pearson", delta=1e-5, threshold="calibration", calibration=100)
    big, small = bounds.bound(s0, s1, alpha=0.025, **kw), bounds.bound(s0, s1, alpha=0.025 / 8, **kw)
    assert small.epsilon_lb > big.epsilon_lb + 0.05
    assert small.details["threshold_value"] != big.details["threshold_value"]
    rule = bounds.Rule(big.details["threshold_value"], big.details["orientation"])
    same_rule = bounds.rule_bound(s0[100:], s1[100:], rule, method="clopper-pearson", alpha=0.025 / 8, delta=1e-5)[0]
    assert same_rule < big.epsilon_lb
