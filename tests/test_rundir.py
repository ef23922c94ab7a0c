"""Output directories are replaced safely (issue 13 items 4, 5; dp_audit/rundir.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dp_audit.audit import target_from_checkpoint
from dp_audit.errors import UsageError
from dp_audit.rundir import OutputChanged, claim_output, install_output

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"


def _canaries(path: Path) -> Path:
    path.write_text('{"id": "a", "text": "hello", "label": 0, "member": true}\n')
    return path


def _model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_overwrite_never_deletes_its_own_inputs(tmp_path):
    """Bug caught: `run --model P/model --out P --overwrite` removed P (the model, the tokenizer,
    unrelated files) and then failed. P is not a dp-audit run: refused, everything kept."""
    parent = tmp_path / "P"
    model = _model(parent / "model")
    (parent / "notes.txt").write_text("mine")
    cans = _canaries(tmp_path / "c.jsonl")
    with pytest.raises(UsageError, match="not a dp-audit run"):
        target_from_checkpoint(model=model, canaries=cans, epsilon=1.0, delta=1e-5, out=parent, overwrite=True)
    assert (model / "model.safetensors").read_bytes() == b"weights" and (parent / "notes.txt").exists()


def test_overwrite_refuses_a_run_that_holds_an_input(tmp_path):
    """Bug caught: a dp-audit run directory holding the model was removed before the model was read."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    model = _model(run / "mymodel")
    cans = _canaries(tmp_path / "c.jsonl")
    with pytest.raises(UsageError, match="holds an input"):
        target_from_checkpoint(model=model, canaries=cans, epsilon=1.0, delta=1e-5, out=run, overwrite=True)
    assert (model / "model.safetensors").exists() and (run / "audit.json").exists()


def test_overwrite_replaces_a_previous_run(tmp_path):
    """Bug caught: --overwrite of a genuine earlier run of this command must still work."""
    model = _model(tmp_path / "model")
    cans = _canaries(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    first = target_from_checkpoint(model=model, canaries=cans, epsilon=1.0, delta=1e-5, out=out)
    second = target_from_checkpoint(model=model, canaries=cans, epsilon=2.0, delta=1e-5, out=out, overwrite=True)
    assert first.manifest["run_id"] != second.manifest["run_id"]
    assert json.loads((out / "manifest.json").read_text())["claim"]["epsilon"] == 2.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_files_put_in_out_meanwhile_are_never_deleted(tmp_path):
    """Bug caught: `train` checked emptiness at the start and rmtree'd at the end: a file put into
    --out meanwhile (or a second train's run) was deleted and both commands reported success."""
    out = tmp_path / "out"
    out.mkdir()
    state = claim_output(out, overwrite=False)
    (out / "precious.txt").write_text("written meanwhile")
    tmp = tmp_path / ".out-new"
    tmp.mkdir()
    (tmp / "manifest.json").write_text(json.dumps({"run_id": "new"}))
    with pytest.raises(OutputChanged, match="nothing was removed"):
        install_output(tmp, out, state)
    assert (out / "precious.txt").read_text() == "written meanwhile" and (tmp / "manifest.json").exists()


def test_out_naming_a_file_is_usage(tmp_path):
    """Bug caught: --out naming a file raised NotADirectoryError deep inside (exit 1)."""
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        claim_output(f, overwrite=True)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), 0.0, -1.0])
def test_declared_epsilon_must_be_finite_and_positive(tmp_path, eps):
    """Bug caught: epsilon = inf was accepted as a claim (nothing can refute it)."""
    with pytest.raises(UsageError, match="finite epsilon"):
        target_from_checkpoint(model=_model(tmp_path / "m"), canaries=_canaries(tmp_path / "c.jsonl"),
                               epsilon=eps, delta=1e-5, out=tmp_path / "o")


def test_train_never_deletes_what_appeared_in_out_meanwhile(tiny_config, tmp_path, monkeypatch):
    """Bug caught (issue 13 item 4): `train` checked that --out was empty before training and
    rmtree'd it before the final rename: a file written there meanwhile (or a second train's run)
    was deleted and both commands reported success."""
    import dp_audit.trainers.base as base

    out = tmp_path / "out"
    real = base.prepare

    def prepare_then_someone_writes(*a, **k):
        prep = real(*a, **k)
        out.mkdir()
        (out / "precious.txt").write_text("another command's output")
        return prep

    monkeypatch.setattr(base, "prepare", prepare_then_someone_writes)
    with pytest.raises(OutputChanged, match="nothing was removed"):
        base.train_run(tiny_config(trainer="nondp", canaries={"m": 10}), out, progress=False)
    assert (out / "precious.txt").read_text() == "another command's output"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]
    assert len(kept) == 1 and (kept[0] / "manifest.json").is_file()  # the new run is not lost either


def test_train_overwrite_refuses_a_directory_that_is_not_a_run(tiny_config, tmp_path):
    """Bug caught: `train --overwrite` into a folder of the user's files deleted them."""
    from dp_audit.trainers.base import train_run

    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not a dp-audit run"):
        train_run(tiny_config(trainer="nondp", canaries={"m": 10}), out, progress=False, overwrite=True)
    assert (out / "thesis.tex").exists()


def test_files_put_into_an_existing_run_meanwhile_are_never_deleted(tmp_path):
    """Bug caught (review of issue 13 item 4): the state taken before training compared only the
    run id, so a file written into the old run while `train --overwrite` ran (same run id) was
    removed with it. Seen through the CLI: NOTES.txt written 4 s into a train was gone."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    state = claim_output(run, overwrite=True)
    (run / "NOTES.txt").write_text("mine")
    new = tmp_path / "new"
    new.mkdir()
    with pytest.raises(OutputChanged, match="changed while"):
        install_output(new, run, state)
    assert (run / "NOTES.txt").read_text() == "mine" and new.is_dir()


def test_a_file_changed_in_the_old_run_meanwhile_is_never_deleted(tmp_path):
    """Bug caught: an edit to a file of the old run during the command (same names, same run id)
    went unnoticed and the edited file was removed."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    state = claim_output(run, overwrite=True)
    (run / "scores" / "loss.npz").write_bytes(b"edited by someone, and longer than before" * 100)
    new = tmp_path / "new"
    new.mkdir()
    with pytest.raises(OutputChanged):
        install_output(new, run, state)
    assert (run / "scores" / "loss.npz").read_bytes().startswith(b"edited")


def test_out_that_is_a_symlink_is_refused_before_any_work(tmp_path):
    """Bug caught: `--out LINK --overwrite` (LINK -> a run) passed the checks, then renamed the link,
    installed the new run and failed in rmtree (exit 2 after success, a stray link left); an empty
    target failed in os.rmdir after all the work. A symlinked --out is refused up front."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    with pytest.raises(UsageError, match="symbolic link"):
        claim_output(link, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    link2 = tmp_path / "link2"
    link2.symlink_to(empty, target_is_directory=True)
    with pytest.raises(UsageError, match="symbolic link"):
        claim_output(link2, overwrite=False)
    assert (run / "manifest.json").is_file() and link.is_symlink()


def test_train_overwrite_never_deletes_the_run_holding_its_config(tmp_path, capsys):
    """Bug caught: `train --config R/cfg.toml --out R --overwrite` (R a dp-audit run) removed R and
    the user's cfg.toml with it: the config was not counted among the inputs. Refused (exit 2)
    before any training, everything kept."""
    from dp_audit.cli import main

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    cfg = run / "my-config.toml"
    cfg.write_text('trainer = "dpsgd"\n')
    code = main(["train", "--config", str(cfg), "--out", str(run), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "holds an input" in err and len(err.strip().splitlines()) == 1
    assert cfg.read_text() == 'trainer = "dpsgd"\n' and (run / "audit.json").is_file()


def test_an_external_run_can_be_re_audited_and_its_checkpoint_is_verified(tmp_path):
    """Bug caught (review of issue 13 item 3): `run --run X` on a run made by `run --model M --out X`
    looked for X/model and exited 2, so an interrupted external audit could not be redone the way
    the error message says ("rerun dp-audit run --run X"). Now the recorded checkpoint is audited,
    after checking its files still have the recorded sha256 (an edited checkpoint: exit 3)."""
    from dp_audit.audit import target_from_run
    from dp_audit.errors import IntegrityError
    from dp_audit.manifest import PENDING

    model = _model(tmp_path / "model")
    cans = _canaries(tmp_path / "c.jsonl")
    out = tmp_path / "X"
    target_from_checkpoint(model=model, canaries=cans, epsilon=1.0, delta=1e-5, out=out, kind="classifier")
    (out / PENDING).write_text("{}")  # an audit that was killed
    again = target_from_run(out)
    assert again.model_path.resolve() == model.resolve() and again.source == "external"
    assert again.kind == "classifier" and again.claim["epsilon"] == 1.0
    (model / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(IntegrityError, match="checkpoint"):
        target_from_run(out)
