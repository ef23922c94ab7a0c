"""``dp-audit report`` exit codes, the comparison report, and rendering without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dp_audit.cli import main
from dp_audit.reports import render_comparison

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"

# (name, trainer, mode, verdict status): DP-SGD vs DP-Flat paper vs DP-Flat private
RUNS = (("dpsgd", "dpsgd", None, "pass"), ("dpflat-paper", "dpflat", "awp=paper", "fail"),
        ("dpflat-private", "dpflat", "awp=dpsat", "pass"))


def copy_run(tmp_path: Path, name: str, edit=None) -> Path:
    from dp_audit.manifest import add_artifacts

    run = tmp_path / name
    shutil.copytree(FIXTURE, run)
    if edit is not None:
        audit = json.loads((run / "audit.json").read_text())
        edit(audit)
        (run / "audit.json").write_text(json.dumps(audit))
        add_artifacts(run, ["audit.json"])
    return run


def three_runs(tmp_path: Path) -> list[Path]:
    runs = []
    for i, (name, trainer, mode, status) in enumerate(RUNS):
        def edit(a, trainer=trainer, mode=mode, status=status, i=i):
            a["model"].update(trainer=trainer, mode=mode)
            a["verdict"]["status"] = status
            a["attacks"][0]["auc"] = 0.6 + 0.1 * i
            if i == 2:
                a["landscapes"] = None
        runs.append(copy_run(tmp_path, name, edit))
    return runs


def test_cli_report_writes_outputs(tmp_path, capsys):
    run = copy_run(tmp_path, "r1")
    code = main(["report", "--run", str(run), "--format", "html,md,json", "--out", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]
    assert "wrote" in capsys.readouterr().out


def test_cli_default_out_is_run_dir(tmp_path):
    run = copy_run(tmp_path, "r1")
    assert main(["report", "--run", str(run), "--format", "md"]) == 0
    assert (run / "report.md").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["--run", "{tmp}/missing"], "run directory not found"),
    (["--run", "{tmp}"], "audit.json not found"),
    (["--run", "{run}", "--format", "html,docx"], "known: html, json, md, pdf"),
    (["--run", "{run}", "--run", "{run}"], "--out"),
])
def test_cli_usage_errors_exit_2(tmp_path, capsys, argv, needle):
    run = copy_run(tmp_path, "r1")
    argv = [a.format(tmp=tmp_path, run=run) for a in argv]
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_cli_malformed_audit_exits_3(tmp_path, capsys):
    run = copy_run(tmp_path, "r1")
    (run / "audit.json").write_text("[1, 2")
    assert main(["report", "--run", str(run), "--format", "md", "--out", str(tmp_path / "o")]) == 3
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_help_has_example(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    assert "dp-audit report --run runs/dpsgd" in capsys.readouterr().out


def test_comparison_of_three_runs(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    runs = three_runs(tmp_path)
    out = render_comparison(runs, out_dir=tmp_path / "cmp", formats=("html", "md", "json", "pdf"),
                            pdf_engine="matplotlib")
    html = out["html"].read_text(encoding="utf-8")
    assert html.count("<tr") == 1 + 3  # header + one row per run
    assert html.count("<figure") == 2  # overlaid ROC and landscape curves
    for name, trainer, mode, status in RUNS:
        assert f">{name}</a>" in html and status.upper() in html
    assert 'href="../dpsgd/report.html"' in html  # links to each run's own report
    md = out["md"].read_text(encoding="utf-8")
    rows = [ln for ln in md.splitlines() if ln.startswith("| dp")]
    assert len(rows) == 3 and "❌ FAIL" in rows[1] and "✅ PASS" in rows[0]
    data = json.loads(out["json"].read_text())
    assert [r["label"] for r in data["runs"]] == [r[0] for r in RUNS]
    first = data["runs"][0]  # loss AUC set to 0.6, so zlib (AUC 0.843 in the fixture) is the best attack
    assert first["best_attack"] == "zlib" and first["best_auc"] == pytest.approx(0.8426, abs=1e-3)
    assert len(pypdf.PdfReader(out["pdf"]).pages) == 1 + 2


def test_cli_comparison(tmp_path):
    runs = three_runs(tmp_path)
    argv = ["report", "--format", "html,md", "--out", str(tmp_path / "cmp")]
    for r in runs:
        argv += ["--run", str(r)]
    assert main(argv) == 0
    assert (tmp_path / "cmp" / "report.html").is_file()


def test_rendering_imports_no_torch(tmp_path):
    """Rendering reads no model: torch, transformers, opacus and the trainers stay unimported."""
    code = (
        "import sys\n"
        "from dp_audit.reports import render_run\n"
        f"render_run({str(FIXTURE)!r}, out_dir={str(tmp_path)!r}, formats=('html', 'pdf', 'md', 'json'))\n"
        "bad = [m for m in ('torch', 'transformers', 'opacus', 'dp_audit.trainers', 'dp_audit.attacks') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok"


def test_rerendering_a_legacy_run_keeps_its_hashes_valid(tmp_path):
    """Bug caught (issue 13 item 2): a v0.1 run lists report.html in its manifest; `report --run R`
    re-rendered it with new bytes (the HTML shows the manifest's hash table, including its own old
    hash) without updating the manifest, so the next gate exited 3 "sha256 mismatch"."""
    from dp_audit.manifest import add_artifacts

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    assert main(["report", "--run", str(run), "--format", "html,md"]) == 0
    add_artifacts(run, ["report.html", "report.md"])  # what `dp-audit run` of v0.1 did
    assert main(["report", "--run", str(run), "--format", "html,md"]) == 0
    assert main(["gate", "--run", str(run), "--quiet"]) == 1  # the fixture's verdict (refuted), not 3



def test_report_with_a_deleted_scores_file_is_an_integrity_error(tmp_path):
    """Bug caught (issue 13 item 11): `report` exited 0 when a scores file the manifest lists was
    deleted, silently dropping its histogram."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "scores" / "zlib.npz").unlink()
    assert main(["report", "--run", str(run), "--format", "md", "--out", str(tmp_path / "o")]) == 3
    assert main(["report", "--run", str(run), "--format", "md", "--out", str(tmp_path / "o2"), "--no-verify"]) == 0
