"""Exit codes of the CLI for errors dp-audit did not foresee (issue 13, item 1; docs/reliability.md).

Exit 1 means "claim refuted" and nothing else: an environment error (unwritable output, a path the
OS refuses) exits 2 with one line, an unforeseen exception exits 4 with one line and the traceback in
a log file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dp_audit import cli
from dp_audit.errors import EXIT_INTERNAL, EXIT_USAGE

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"


@pytest.fixture
def run_copy(tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst)
    return dst


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # catches: a traceback printed to the user
    assert "Traceback" not in err
    return lines[0]


def test_unwritable_summary_path_is_usage_not_refuted(run_copy, tmp_path, capsys):
    """Bug caught: `gate --summary <a directory>` raised IsADirectoryError, which escaped cli.main
    and exited 1 (the refuted code) with a traceback."""
    target = tmp_path / "a-directory"
    target.mkdir()
    code = cli.main(["gate", "--run", str(run_copy), "--summary", str(target), "--quiet"])
    assert code == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "cannot access" in line


def test_path_component_too_long_is_usage(run_copy, capsys):
    """Bug caught: a path component over 255 characters (ENAMETOOLONG) exited 1 with a traceback."""
    code = cli.main(["gate", "--run", str(run_copy), "--summary", str(run_copy / ("x" * 300)), "--quiet"])
    assert code == EXIT_USAGE
    _one_line(capsys.readouterr().err)


def test_unforeseen_exception_exits_4_with_traceback_log(run_copy, monkeypatch, capsys):
    """Bug caught: any exception not derived from DPAuditError exited 1 ("claim refuted")."""
    import dp_audit.gate as gate

    def boom(*a, **k):
        raise ZeroDivisionError("simulated defect")

    monkeypatch.setattr(gate, "evaluate_gate", boom)
    code = cli.main(["gate", "--run", str(run_copy), "--quiet"])
    assert code == EXIT_INTERNAL == 4
    line = _one_line(capsys.readouterr().err)
    assert "internal error" in line and "ZeroDivisionError" in line
    log = Path(line.split("traceback: ")[1].split(";")[0])
    text = log.read_text()
    log.unlink()
    assert "simulated defect" in text and "Traceback" in text


def test_non_utf8_policy_is_usage(run_copy, tmp_path, capsys):
    """Bug caught: a policy TOML that is not UTF-8 raised UnicodeDecodeError → exit 1."""
    policy = tmp_path / "gate.toml"
    policy.write_bytes(b"alpha = 0.05\n# \xff\xfe bad bytes\n")
    code = cli.main(["gate", "--run", str(run_copy), "--policy", str(policy), "--quiet"])
    assert code == EXIT_USAGE
    _one_line(capsys.readouterr().err)


def test_error_messages_stay_on_one_line_whatever_the_input(run_copy, capsys):
    """Bug caught (found by the fuzz suite): a manifest value holding a control character such as
    \\x1e (a line break for str.splitlines and some terminals) was printed raw in the error."""
    import json

    from dp_audit.manifest import MANIFEST, manifest_digest

    m = json.loads((run_copy / MANIFEST).read_text())
    m["schema_version"] = "1\x1e\nTraceback: fake\x1b[31m"
    m["digest"] = manifest_digest(m)
    (run_copy / MANIFEST).write_text(json.dumps(m))
    assert cli.main(["gate", "--run", str(run_copy), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "\x1b" not in err and "\x1e" not in err


@pytest.mark.parametrize("override", ['estimators=["bogus"]', 'formats=["html", "bogus"]'])
def test_audit_config_errors_are_found_before_out_is_created(tmp_path, capsys, override):
    """Bug caught (review of issue 13 item 9): `run --model M ... --out X --set estimators=["bogus"]`
    created X (manifest, canaries) and only then refused the config, leaving a half-made run that a
    rerun without --overwrite refuses. Refused (exit 2) with X never created."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    cans = tmp_path / "c.jsonl"
    cans.write_text('{"id": "a", "text": "hi", "label": 0, "member": true}\n'
                    '{"id": "b", "text": "ho", "label": 1, "member": false}\n')
    out = tmp_path / "X"
    code = cli.main(["run", "--model", str(model), "--canaries", str(cans), "--epsilon", "2", "--delta", "1e-5",
                     "--out", str(out), "--set", override, "--quiet"])
    assert code == EXIT_USAGE and "bogus" in _one_line(capsys.readouterr().err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "model"]


def test_os_error_on_a_path_with_a_newline_stays_on_one_line(run_copy, tmp_path, capsys):
    """Bug caught (review of issue 13 item 1): the OSError branch printed exc.filename raw, so a
    --summary path holding a newline (and over 255 characters) gave a two-line error; and the line
    named the temporary file, not the path the user gave."""
    bad = tmp_path / ("a" * 300 + "\nx") / "s.md"
    assert cli.main(["gate", "--run", str(run_copy), "--quiet", "--summary", str(bad)]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "\\n" in line or " x" in line
    summary_dir = tmp_path / "adir"
    summary_dir.mkdir()
    assert cli.main(["gate", "--run", str(run_copy), "--quiet", "--summary", str(summary_dir)]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert str(summary_dir) in line and ".tmp" not in line
