"""The step-audit output directory and the ``dp-audit step-audit`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dp_audit.cli import main
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import sha256_file
from dp_audit.manifest import load_manifest
from dp_audit.stepaudit import read_step_audit, step_audit
from dp_audit.stepaudit.constructions import build


def test_output_files_hashes_and_round_trip(tmp_path):
    """manifest.json lists the sha256 of trials.npz and step_audit.json; the npz loads without
    pickles and holds the trial scores in order; the JSON round-trips to the same result.
    Catches a manifest written before the files (stale hashes), scores saved in the wrong order
    or as objects, and a result JSON the gate cannot read back."""
    out = tmp_path / "sa"
    res = step_audit(build("gaussian", mu=2.0), trials=500, seed=3, progress=False, out=out)
    man = load_manifest(out)  # verifies every hash
    assert man["kind"] == "step-audit" and man["seeds"] == {"seed": 3}
    assert set(man["artifacts"]) == {"trials.npz", "step_audit.json"}
    for rel, digest in man["artifacts"].items():
        assert sha256_file(out / rel) == digest
    assert man["claim"]["mu"] == 2.0 and man["claim"]["per"] == "step"
    with np.load(out / "trials.npz", allow_pickle=False) as z:
        assert np.array_equal(z["scores_d0"], res.scores_d0) and np.array_equal(z["scores_d1"], res.scores_d1)
        assert np.array_equal(z["member"], np.r_[np.zeros(500, bool), np.ones(500, bool)])
    data = json.loads((out / "step_audit.json").read_text())
    v = data["verdict"]
    assert v["claimed_epsilon"] == res.claim_epsilon and v["epsilon_lb_max"] == res.eps_lb
    assert v["alpha"] == 0.05 and v["n_tests"] == 2 and v["threat_model"] == "step-level"
    back = read_step_audit(out)
    assert back == res  # scores are not compared; the rest is
    assert np.array_equal(back.scores_d1, res.scores_d1)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_tampered_trials_file_is_an_integrity_error(tmp_path):
    """Editing trials.npz after the audit must fail the hash check (exit 3 in the CLI).
    Catches a reader that does not verify the manifest."""
    out = tmp_path / "sa"
    step_audit(build("gaussian"), trials=200, seed=0, progress=False, out=out)
    z = dict(np.load(out / "trials.npz", allow_pickle=False))
    z["scores_d1"] = z["scores_d1"] + 1.0
    np.savez(out / "trials.npz", **z)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        read_step_audit(out)


def test_existing_audit_is_never_overwritten(tmp_path):
    """A second audit into the same directory is refused before any trial runs. Catches silent
    overwrite of an earlier (e.g. refuting) result."""
    out = tmp_path / "sa"
    step_audit(build("gaussian"), trials=100, seed=0, progress=False, out=out)
    before = (out / "step_audit.json").read_bytes()
    with pytest.raises(UsageError, match="already holds an audit"):
        step_audit(build("gaussian"), trials=100, seed=1, progress=False, out=out)
    assert (out / "step_audit.json").read_bytes() == before


def test_cli_exit_codes(tmp_path, capsys):
    """0 when the per-step claim stands (DP-SGD control), 1 when refuted (DP-Flat paper mode),
    2 for usage errors (unknown construction or option, bad α, existing audit). Catches a
    command that always exits 0 or maps refutation to the wrong code."""
    assert main(["step-audit", "--construction", "dpsgd-dirac", "--trials", "1000", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert "not refuted" in capsys.readouterr().out
    assert main(["step-audit", "--construction", "dpflat-awp-paper", "--trials", "1000", "--out",
                 str(tmp_path / "b"), "--no-progress"]) == 1
    assert "REFUTED" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "step_audit.json").read_text())["verdict"]["status"] == "fail"
    assert main(["step-audit", "--construction", "nope", "--out", str(tmp_path / "c")]) == 2
    assert "unknown construction" in capsys.readouterr().err
    assert main(["step-audit", "--construction", "dpzo-laplace", "--sigma", "2", "--out", str(tmp_path / "d")]) == 2
    assert main(["step-audit", "--construction", "gaussian", "--alpha", "0.9", "--out", str(tmp_path / "e")]) == 2
    assert main(["step-audit", "--construction", "gaussian", "--trials", "1000", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2  # already holds an audit
    assert main(["step-audit", "--construction", "gaussian"]) == 2  # no --out
    err = capsys.readouterr().err
    assert all(len(line) < 300 for line in err.strip().splitlines())


def test_cli_help_and_list(capsys):
    """--help documents the exit codes and an example; --list names every construction.
    Catches a command missing from the CLI's registry."""
    with pytest.raises(SystemExit) as exc:
        main(["step-audit", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes" in text and "dp-audit step-audit --construction" in text
    assert main(["step-audit", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("dpsgd-dirac", "dpflat-awp-paper", "dpflat-awp-dpsat", "dpflat-awp-per-example", "dpzo-gaussian",
                 "dpzo-laplace", "gaussian-null"):
        assert name in listed


def test_top_level_reexport_is_lazy():
    """dp_audit.step_audit is the stepaudit API, and importing dp_audit alone does not import
    torch (DESIGN.md §1). Catches an eager import in dp_audit/__init__.py."""
    import subprocess
    import sys

    code = ("import sys, dp_audit; assert 'torch' not in sys.modules; "
            "from dp_audit import step_audit, Construction; import dp_audit.stepaudit as s; "
            "assert step_audit is s.step_audit and Construction is s.Construction; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_files_in_a_non_empty_out_are_never_overwritten(tmp_path, capsys):
    """Bug caught (review of issue 13): `step-audit --out DIR` into a directory without a manifest
    overwrote files dp-audit did not write (a user's trials.npz and step_audit.json became the
    audit's). A non-empty --out is refused (exit 2) before the trials; nothing is replaced."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "trials.npz").write_bytes(b"precious")
    (out / "step_audit.json").write_text('{"mine": 1}')
    code = main(["step-audit", "--construction", "gaussian", "--trials", "200", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert (out / "trials.npz").read_bytes() == b"precious" and (out / "step_audit.json").read_text() == '{"mine": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no temporary sibling left


def test_a_failure_half_way_leaves_no_half_written_out(tmp_path, monkeypatch):
    """Bug caught: files were written one by one into --out, so a failure (or kill) after
    trials.npz left a directory with trials.npz and no manifest. Now the directory is built in a
    temporary sibling: a failure leaves --out absent and no temporary sibling behind."""
    import dp_audit.stepaudit.output as output

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "atomic_write_json", boom)  # after trials.npz, before the manifest
    out = tmp_path / "sa"
    with pytest.raises(OSError):
        step_audit(build("gaussian", mu=1.0), trials=200, seed=0, progress=False, out=out)
    assert list(tmp_path.iterdir()) == []
