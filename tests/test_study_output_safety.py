"""``dp-audit study --out DIR`` never writes over, or deletes, what the study did not create
(issue 17; docs/reliability.md's rule for output directories)."""

from __future__ import annotations

import json

import pytest

from dp_audit.cli import main
from dp_audit.errors import UsageError
from dp_audit.study.arms import Arm
from dp_audit.study.row import ArmRow
from dp_audit.study.runner import run_study, study_settings
from dp_audit.study.store import MARKER, clear_step_dir

SETTINGS = study_settings(quick=True, trials=1000, seed=0)


def _listing(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def _arm_fn(arm, d, *, settings, **_):
    return ArmRow(name=arm.name, label=arm.label, group=arm.group, claimed_epsilon=1.0)


def test_a_nonempty_directory_that_is_no_study_is_refused_untouched(tmp_path, capsys):
    """Bug caught: the study writing into (or clearing) a user's folder given as --out by mistake."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "arms").mkdir()
    before = _listing(tmp_path)
    assert main(["study", "awp-leak", "--out", str(tmp_path), "--quick", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not a dp-audit study directory" in err and len(err.strip().splitlines()) == 1
    assert _listing(tmp_path) == before


def test_out_is_a_file_or_another_settings_study_exit_2(tmp_path, capsys):
    """Bug caught: --out naming a file crashing (exit 4) instead of a usage error, and a rerun with
    other settings mixing two studies' rows in one table."""
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["study", "awp-leak", "--out", str(f), "--quick"]) == 2
    d = tmp_path / "s"
    run_study(d, arms=(), sweeps=(), settings=SETTINGS, log=lambda s: None)
    before = _listing(d)
    assert main(["study", "awp-leak", "--out", str(d), "--quick", "--seed", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert _listing(d) == before


def test_user_files_inside_an_arm_survive_a_redo(tmp_path):
    """Bug caught: redoing a half-done arm by deleting its folder, which would take a file the user
    put there with it; the arm's own step-audit folder holding a foreign file is refused."""
    run_study(tmp_path, arms=(), sweeps=(), settings=SETTINGS, log=lambda s: None)
    step = tmp_path / "arms" / "a" / "step" / "c"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"kind": "step-audit"}))
    (step / "my-notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="did not write"):
        clear_step_dir(step)
    assert (step / "my-notes.txt").read_text() == "keep me" and (step / "manifest.json").exists()
    (step / "my-notes.txt").unlink()
    clear_step_dir(step)  # the study's own three files: removed
    assert not step.exists()
    (tmp_path / "arms" / "a" / "keep.txt").write_text("mine")
    arm = Arm("a", "A", "control", {}, ())
    run_study(tmp_path, arms=(arm,), sweeps=(), settings=SETTINGS, arm_fn=_arm_fn, log=lambda s: None)
    assert (tmp_path / "arms" / "a" / "keep.txt").read_text() == "mine"
    assert json.loads((tmp_path / MARKER).read_text())["settings"] == SETTINGS


def test_outputs_are_written_atomically_no_temp_files_left(tmp_path):
    """Bug caught: an output missing, temp files left behind, or an arm's label rendered unescaped
    into study.html (the template must autoescape). (In-place writes are not caught here: every
    file goes through dp_audit.io.atomic_write_*, tested in test_core_io.)"""
    arm = Arm("a", "A <b>", "control", {}, ())
    run_study(tmp_path, arms=(arm,), sweeps=(), settings=SETTINGS, arm_fn=_arm_fn, log=lambda s: None)
    names = {p.name for p in tmp_path.rglob("*")}
    assert {"study.json", "study.md", "study.html", MARKER, "result.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    html = (tmp_path / "study.html").read_text()
    assert "A &lt;b&gt;" in html and "A <b>" not in html  # autoescaped


def test_bad_options_are_usage_errors_before_any_work(tmp_path, capsys):
    """Bug caught: --trials too small (or negative --seed) accepted and failing later inside a step
    audit, after a study directory was created."""
    out = tmp_path / "s"
    assert main(["study", "awp-leak", "--out", str(out), "--quick", "--trials", "10"]) == 2
    assert main(["study", "awp-leak", "--out", str(out), "--quick", "--seed", "-1"]) == 2
    assert "--trials must be at least 100" in capsys.readouterr().err
    assert not out.exists()
