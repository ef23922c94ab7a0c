"""Resumability of ``dp-audit study`` (issue 17): a rerun does only the arms not done, reuses the
valid results (hash-checked) and redoes half-done or altered ones. Fake arms: no training."""

from __future__ import annotations

import json

import pytest

from dp_audit.study.arms import Arm, SweepPoint
from dp_audit.study.row import RESULT, ArmRow, SweepRow
from dp_audit.study.runner import run_study, study_settings

ARMS = tuple(Arm(f"arm{i}", f"Arm {i}", ("control", "paper", "private")[i % 3], {"trainer": "dpsgd"}, (f"c{i}",))
             for i in range(5))
SWEEPS = tuple(SweepPoint("awp-gamma", "c", "gamma", g) for g in (1e-3, 1e-1))
SETTINGS = study_settings(quick=True, trials=1000, seed=0)


class Fake:
    """Deterministic rows from the arm's name; counts calls; raises KeyboardInterrupt at call ``stop``."""

    def __init__(self, stop: int | None = None):
        self.calls: list[str] = []
        self.stop = stop

    def arm(self, arm, d, *, settings, **_):
        if self.stop is not None and len(self.calls) == self.stop:
            (d / "run").mkdir(parents=True)  # a half-done arm: work started, no result.json
            raise KeyboardInterrupt
        self.calls.append(arm.name)
        i = int(arm.name[3:])
        return ArmRow(name=arm.name, label=arm.label, group=arm.group, claimed_epsilon=1.0,
                      step_constructions=arm.constructions, step_claim_epsilon=4.38, step_eps_lb=10.0 * i,
                      step_refuted=10.0 * i > 4.38, blackbox_eps_lb=0.0, blackbox_refuted=False,
                      timings={"train_s": 0.1 * len(self.calls)})

    def sweep(self, point, d, *, settings, **_):
        self.calls.append(point.name)
        return SweepRow(name=point.name, sweep=point.sweep, construction=point.construction, option=point.option,
                        value=point.value, step_claim_epsilon=4.38, step_eps_lb=point.value * 100,
                        step_refuted=point.value * 100 > 4.38, timings={"step_s": 0.5})


def _run(out, fake):
    return run_study(out, arms=ARMS, sweeps=SWEEPS, settings=SETTINGS, arm_fn=fake.arm, sweep_fn=fake.sweep,
                     log=lambda s: None)


def _without_timings(path):
    data = json.loads(path.read_text())
    data.pop("timings")
    for row in data["arms"] + data["sweeps"]:
        row.pop("timings")
    return data


@pytest.mark.parametrize("k", [0, 2, 4])
def test_interrupted_after_k_arms_rerun_does_only_the_rest(tmp_path, k):
    """Bug caught: a rerun that redoes finished arms (no resume), skips the half-done one (its
    work started but no result.json), or yields a study.json different from an uninterrupted run."""
    whole = Fake()
    _run(tmp_path / "whole", whole)
    first = Fake(stop=k)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed", first)
    assert first.calls == [a.name for a in ARMS[:k]]
    assert not (tmp_path / "resumed" / "study.json").exists()
    second = Fake()
    res = _run(tmp_path / "resumed", second)
    assert second.calls == [a.name for a in ARMS[k:]] + [p.name for p in SWEEPS]
    assert res.skipped == tuple(a.name for a in ARMS[:k])
    assert _without_timings(tmp_path / "resumed" / "study.json") == _without_timings(tmp_path / "whole" / "study.json")
    third = Fake()
    _run(tmp_path / "resumed", third)
    assert third.calls == []  # everything valid: nothing redone


def test_an_altered_result_is_redone_not_trusted(tmp_path):
    """Bug caught: a result.json edited by hand (ε_LB lowered, hash left stale) or truncated being
    reused as if the study had computed it."""
    _run(tmp_path, Fake())
    f = tmp_path / "arms" / "arm3" / RESULT
    data = json.loads(f.read_text())
    data["row"]["step_eps_lb"] = 0.0
    f.write_text(json.dumps(data))
    (tmp_path / "arms" / "arm1" / RESULT).write_text('{"kind": "study-arm", "row": ')
    again = Fake()
    _run(tmp_path, again)
    assert again.calls == ["arm1", "arm3"]
    assert json.loads(f.read_text())["row"]["step_eps_lb"] == 30.0


def test_a_result_of_another_arm_is_not_reused(tmp_path):
    """Bug caught: a result accepted by its hash alone, so a result.json copied into another arm's
    folder (valid hash, wrong arm) fills that arm's row."""
    _run(tmp_path, Fake())
    (tmp_path / "arms" / "arm2" / RESULT).write_bytes((tmp_path / "arms" / "arm4" / RESULT).read_bytes())
    again = Fake()
    _run(tmp_path, again)
    assert again.calls == ["arm2"]


def test_a_result_of_an_older_arm_definition_is_not_reused(tmp_path):
    """Bug caught: a result accepted when its name and the study settings match although the arm it
    measured is no longer the arm the study asks for (its config, its step constructions or a sweep
    point's construction changed, e.g. the DP-SGD arm gaining Dirac canaries): the stale row would
    fill the table and the conclusion."""
    import dataclasses

    _run(tmp_path, Fake())
    arms = list(ARMS)
    arms[1] = dataclasses.replace(arms[1], spec={"trainer": "dpsgd", "canaries": {"gradient": 200}})
    arms[3] = dataclasses.replace(arms[3], constructions=("c3", "other"))
    sweeps = (dataclasses.replace(SWEEPS[0], construction="d"), SWEEPS[1])
    again = Fake()
    run_study(tmp_path, arms=tuple(arms), sweeps=sweeps, settings=SETTINGS, arm_fn=again.arm,
              sweep_fn=again.sweep, log=lambda s: None)
    assert again.calls == ["arm1", "arm3", SWEEPS[0].name]
    third = Fake()
    run_study(tmp_path, arms=tuple(arms), sweeps=sweeps, settings=SETTINGS, arm_fn=third.arm,
              sweep_fn=third.sweep, log=lambda s: None)
    assert third.calls == []  # the redone results are reused under the new definitions
