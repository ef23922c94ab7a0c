"""``dp-audit study --out DIR`` never writes over, or deletes, what the study did not create
(issue 17; docs/reliability.md's rule for output directories)."""

from __future__ import annotations

import json
import shutil

import pytest

from dp_audit.cli import main
from dp_audit.errors import UsageError
from dp_audit.study.arms import Arm
from dp_audit.study.row import ArmRow
from dp_audit.study.runner import run_study, study_settings
from dp_audit.study.store import MARKER

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


def _writing_arm_fn(stop=False):
    """A fake arm that writes its directories as the real one does: each with a manifest carrying
    the run id the study recorded for it."""

    def fn(arm, d, *, settings, run_ids):
        for key, rid in run_ids.items():
            p = d / "run" if key == "run" else d / "step" / key
            p.mkdir(parents=True)
            (p / "manifest.json").write_text(json.dumps({"run_id": rid, "kind": "train" if key == "run" else "step-audit"}))
            (p / "data.bin").write_bytes(b"x")
        if stop:
            raise KeyboardInterrupt
        return ArmRow(name=arm.name, label=arm.label, group=arm.group, claimed_epsilon=1.0)

    return fn


ARM = Arm("a", "A", "control", {}, ("c",))


def _redo(tmp_path, fn=None):
    (tmp_path / "arms" / "a" / "result.json").unlink(missing_ok=True)  # force the arm to be done again
    run_study(tmp_path, arms=(ARM,), sweeps=(), settings=SETTINGS, arm_fn=fn or _writing_arm_fn(), log=lambda s: None)


def _foreign_run(p, run_id="someone-elses-run"):
    p.mkdir(parents=True)
    (p / "manifest.json").write_text(json.dumps({"run_id": run_id, "kind": "train"}))
    (p / "model.safetensors").write_bytes(b"precious")


@pytest.mark.parametrize("where", ["run", "step/c"])
def test_a_foreign_directory_at_an_arms_path_is_refused_untouched(tmp_path, where):
    """Bug caught: the study replacing whatever dp-audit run (or step audit) sits at its own paths
    (the old rule: any directory with a run id, or with the three step-audit files, was removed),
    e.g. a user's run given the arm's path, or one copied from another study."""
    run_study(tmp_path, arms=(), sweeps=(), settings=SETTINGS, log=lambda s: None)
    _foreign_run(tmp_path / "arms" / "a" / where)
    before = _listing(tmp_path)
    called = []
    with pytest.raises(UsageError, match="did not write") as exc:
        run_study(tmp_path, arms=(ARM,), sweeps=(), settings=SETTINGS, log=lambda s: None,
                  arm_fn=lambda *a, **k: called.append(1))
    assert "\n" not in str(exc.value) and not called  # one line, refused before any work
    assert _listing(tmp_path) == before  # nothing removed


def test_the_cli_exits_2_on_a_foreign_run_at_an_arms_path(tmp_path, capsys):
    """Bug caught: the refusal surfacing as an internal error (exit 4) or after training started."""
    from dp_audit.study.runner import study_settings as ss
    from dp_audit.study.store import open_study_dir

    open_study_dir(tmp_path, study="awp-leak", settings=ss(quick=True, trials=None, seed=0))
    _foreign_run(tmp_path / "arms" / "dpsgd" / "run")
    before = _listing(tmp_path)
    assert main(["study", "awp-leak", "--out", str(tmp_path), "--quick", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did not write" in err
    assert _listing(tmp_path) == before


def test_the_studys_own_directories_are_replaced_on_redo_a_copy_from_another_study_is_not(tmp_path):
    """Bug caught: an owned directory not replaced (a redo then fails on its own output), or the
    record trusting a directory by its path alone: a run copied in from another study (its run id
    is not in this study's record) must be refused."""
    _redo(tmp_path)
    first = json.loads((tmp_path / "arms" / "a" / "run" / "manifest.json").read_text())["run_id"]
    _redo(tmp_path)
    second = json.loads((tmp_path / "arms" / "a" / "run" / "manifest.json").read_text())["run_id"]
    assert first != second and not [p for p in (tmp_path / "arms" / "a").iterdir() if p.name.startswith(".")]
    other = tmp_path.parent / (tmp_path.name + "-other")
    _redo(other)
    shutil.rmtree(tmp_path / "arms" / "a" / "run")
    shutil.copytree(other / "arms" / "a" / "run", tmp_path / "arms" / "a" / "run")
    with pytest.raises(UsageError, match="did not write"):
        _redo(tmp_path)
    assert (tmp_path / "arms" / "a" / "run" / "data.bin").exists()


def test_files_added_to_a_study_directory_survive_a_redo(tmp_path):
    """Bug caught: a redo deleting, with the study's own run, a file the user put into it (the
    listing sealed when the arm finished has changed: refused); files beside the arm's
    directories are never touched."""
    _redo(tmp_path)
    (tmp_path / "arms" / "a" / "step" / "c" / "my-notes.txt").write_text("keep me")
    (tmp_path / "arms" / "a" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="changed since this study wrote it"):
        _redo(tmp_path)
    assert (tmp_path / "arms" / "a" / "step" / "c" / "my-notes.txt").read_text() == "keep me"
    (tmp_path / "arms" / "a" / "step" / "c" / "my-notes.txt").unlink()  # back to what the study wrote
    _redo(tmp_path)
    (tmp_path / "arms" / "a" / "run" / "data.bin").write_bytes(b"edited")  # an edited file: refused too
    with pytest.raises(UsageError, match="changed since"):
        _redo(tmp_path)
    assert (tmp_path / "arms" / "a" / "keep.txt").read_text() == "mine"
    assert json.loads((tmp_path / MARKER).read_text())["settings"] == SETTINGS


def test_an_arm_killed_after_writing_is_redone_over_its_own_unsealed_directories(tmp_path):
    """Bug caught: the run id recorded only after the arm finished: an arm killed midway (its run
    directory written, the step audit not) would leave directories the study refuses forever."""
    with pytest.raises(KeyboardInterrupt):
        _redo(tmp_path, _writing_arm_fn(stop=True))
    assert (tmp_path / "arms" / "a" / "run" / "manifest.json").exists()
    _redo(tmp_path)
    assert (tmp_path / "arms" / "a" / "result.json").exists()


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
