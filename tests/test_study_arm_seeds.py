"""The study's arms: independent step-audit seed streams and the per-arm α stated in the
conclusion (issue 17 leftover, item 4; docs/awp-leak.md "The study")."""

from __future__ import annotations

from dp_audit.study.arms import awp_leak_arms
from dp_audit.study.family import arm_step_seeds, point_seed, sweep_plan
from dp_audit.study.arms import awp_leak_sweeps


def test_every_arm_construction_has_its_own_recorded_seed():
    """Bug caught: arms sharing step-audit seeds (the old seed·1000 + j gave "AWP only" and "all
    three" identical dpflat-awp-paper trials, so two rows of the table were one measurement), a
    seed that changes on rerun (resume would not reproduce), one that depends on the arm's position
    in the list, or arm seeds colliding with the sweep points' seeds."""
    from dp_audit.study.runner import arm_definition

    settings = {"quick": True, "seed": 0, "alpha": 0.05}
    arms = awp_leak_arms()
    seeds = [s for a in arms for s in arm_step_seeds(0, a.name, len(a.constructions))]
    sweeps = [p.seed for p in sweep_plan(awp_leak_sweeps(), settings=settings)]
    assert len(set(seeds + sweeps)) == len(seeds) + len(sweeps)
    assert all(0 <= s < 2**63 for s in seeds)
    awp_only, all_three = (next(a for a in arms if a.name == n) for n in ("dpflat-paper-awp", "dpflat-paper-all"))
    assert arm_step_seeds(0, awp_only.name, 1)[0] != arm_step_seeds(0, all_three.name, 3)[0]
    assert arm_step_seeds(0, "x", 3) == arm_step_seeds(0, "x", 3)  # stable on rerun
    assert arm_step_seeds(0, "x", 3)[:2] == arm_step_seeds(0, "x", 2)  # adding a construction keeps the others
    assert arm_step_seeds(1, "x", 1) != arm_step_seeds(0, "x", 1)  # the study seed matters
    assert arm_definition(all_three, settings=settings)["step_seeds"] == list(arm_step_seeds(0, all_three.name, 3))
    assert point_seed(0, awp_leak_sweeps()[0]) not in seeds


def test_conclusion_states_the_per_arm_alpha_and_the_family_wise_risk():
    """Bug caught: the rendered conclusion reading the arms' refutations as one family-wise
    statement at 95% while each arm is tested at α on its own (10 arms: up to 40% chance of some
    false refutation), or stating a wrong Bonferroni level."""
    from dp_audit.study.conclusion import conclusion
    from dp_audit.study.row import ArmRow

    rows = [ArmRow(name=f"a{i}", label=f"A{i}", group="control", claimed_epsilon=1.0) for i in range(10)]
    last = conclusion(rows, alpha=0.05)[-1]
    assert "its own test at α = 0.05" in last and "40%" in last and "α/10 = 0.005" in last
    assert not any("Confidence" in line for line in conclusion(rows))


def test_the_family_wise_risk_counts_the_step_and_the_end_to_end_test_of_each_arm():
    """Bug caught (review rvwb17): the conclusion's confidence sentence counted one test per arm
    (10 arms: 40%, Bonferroni α/10) while each arm is refuted by either of two α-level tests, its
    step-level bound and its end-to-end bounds (10 arms with both: 20 tests, up to 64%, α/20)."""
    from dp_audit.study.conclusion import conclusion
    from dp_audit.study.row import ArmRow

    rows = [ArmRow(name=f"a{i}", label=f"A{i}", group="control", claimed_epsilon=1.0, step_claim_epsilon=2.0,
                   step_eps_lb=0.5, blackbox_eps_lb=0.0, whitebox_eps_lb=0.1 if i < 8 else None) for i in range(10)]
    last = conclusion(rows, alpha=0.05)[-1]
    assert "20 tests over 10 arms" in last and "64%" in last and "α/20 = 0.0025" in last
    rows[0] = ArmRow(name="a0", label="A0", group="control", claimed_epsilon=1.0, step_claim_epsilon=2.0,
                     step_eps_lb=0.5)  # no end-to-end bound: one test
    assert "19 tests" in conclusion(rows, alpha=0.05)[-1]


def test_conclusion_reads_the_whitebox_column():
    """Bug caught: the white-box column filled but ignored by the conclusion (an arm refuted only
    white-box would read as "no refutation"; none refuted should say what the column can see)."""
    from dp_audit.study.conclusion import conclusion
    from dp_audit.study.row import ArmRow

    ok = [ArmRow(name="p", label="P", group="paper", claimed_epsilon=1.0, whitebox_eps_lb=0.1, component="AWP")]
    lines = conclusion(ok)
    assert any("white-box one-run audit (Dirac gradient canaries) refutes no arm" in x for x in lines)
    assert any("white-box ε_LB 0.10 ≤ 1.00" in x for x in lines)
    bad = [ArmRow(name="p", label="P", group="paper", claimed_epsilon=1.0, whitebox_eps_lb=1.5, component="AWP")]
    lines = conclusion(bad)
    assert any("end-to-end white-box (ε_LB 1.50 > claimed 1.00)" in x for x in lines)
    assert not any("refutes no arm either" in x for x in lines)


def test_results_computed_before_the_arm_seed_streams_are_recomputed_on_resume(tmp_path, monkeypatch):
    """Bug caught (review rvwb17): resuming a study directory written before each arm had its own
    step-audit seeds (definition without ``step_seeds``; trials seeded seed·1000 + j, shared by
    "AWP only" and "all three") reuses those rows next to rows computed with the new streams, so
    the table mixes two seeding schemes. Every such arm must be recomputed, and then reused."""
    import dp_audit.study.runner as runner
    from tests.test_study_resume import ARMS, SETTINGS, SWEEPS, Fake

    current = runner.arm_definition

    def old_definition(arm, *, settings):
        d = current(arm, settings=settings)
        d.pop("step_seeds", None)
        return d

    monkeypatch.setattr(runner, "arm_definition", old_definition)
    runner.run_study(tmp_path, arms=ARMS, sweeps=SWEEPS, settings=SETTINGS, arm_fn=Fake().arm,
                     sweep_fn=Fake().sweep, log=lambda s: None)
    monkeypatch.setattr(runner, "arm_definition", current)
    again = Fake()
    runner.run_study(tmp_path, arms=ARMS, sweeps=SWEEPS, settings=SETTINGS, arm_fn=again.arm, sweep_fn=again.sweep,
                     log=lambda s: None)
    assert again.calls == [a.name for a in ARMS]  # every arm redone; the sweeps' seeds did not change
    third = Fake()
    runner.run_study(tmp_path, arms=ARMS, sweeps=SWEEPS, settings=SETTINGS, arm_fn=third.arm, sweep_fn=third.sweep,
                     log=lambda s: None)
    assert third.calls == []
