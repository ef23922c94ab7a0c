"""The report view model: verdict line, missing sections ("not run"), malformed audit.json
(IntegrityError), integrity of the files read, estimate labelling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.reports import render_run
from dp_audit.reports.viewmodel import ESTIMATE_LABEL, NOT_GATED, build_view

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"


def copy_run(tmp_path: Path, edit=None, name: str = "run", rehash: bool = True) -> Path:
    from dp_audit.manifest import add_artifacts

    run = tmp_path / name
    shutil.copytree(FIXTURE, run)
    if edit is not None:
        audit = json.loads((run / "audit.json").read_text())
        edit(audit)
        (run / "audit.json").write_text(json.dumps(audit))
        if rehash:
            add_artifacts(run, ["audit.json"])
    return run


def test_fixture_view():
    v = build_view(FIXTURE)
    audit = json.loads((FIXTURE / "audit.json").read_text())
    assert v.verdict.status == "fail"
    assert v.verdict.epsilon_lb_max == audit["verdict"]["epsilon_lb_max"]
    assert v.verdict.line.startswith("FAIL: claim refuted")
    for part in ("claimed ε 1.000", "α = 0.05", "δ = 1e-05", "black-box", "fdp on loss"):
        assert part in v.verdict.line
    assert [a.name for a in v.attacks] == ["loss", "zlib"]
    assert all(a.member_scores is not None and len(a.member_scores) == a.n_members for a in v.attacks)
    raw = [e for e in v.estimates if e.method == "raw"]
    assert raw and all(e.label == ESTIMATE_LABEL and not e.exceeds_claim and e.ceiling is None for e in raw)
    assert dict(v.ceiling) == audit["ceiling"]
    assert [u.component for u in v.unaccounted] == ["awp"]  # claim and ledger list it: shown once
    assert v.manifest is not None and v.manifest.data_fingerprint
    assert v.reproduce and v.reproduce.startswith("dp-audit train")


def test_not_gated_uses_highest_bound_not_estimate(tmp_path):
    run = copy_run(tmp_path, lambda a: a.update(verdict=None))
    v = build_view(run)
    assert v.verdict.status == NOT_GATED
    assert v.verdict.line.startswith("NOT GATED")
    bounds = [e.epsilon_lb for e in v.estimates if e.is_bound]
    assert v.verdict.epsilon_lb_max == max(bounds)
    assert v.verdict.epsilon_lb_max < max(e.epsilon_lb for e in v.estimates)  # raw (4.00) is not counted
    out = render_run(run, formats=("md", "json"), out_dir=tmp_path / "out")
    assert "NOT GATED" in out["md"].read_text()
    assert json.loads(out["json"].read_text())["report"]["status"] == NOT_GATED


def _strip_optional(audit):
    for key in ("verdict", "accounting", "landscapes", "ceiling", "reproduce", "canaries", "model"):
        audit.pop(key, None)
    audit["estimates"] = []
    audit["attacks"] = []


def test_missing_sections_render_as_not_run(tmp_path):
    run = copy_run(tmp_path, _strip_optional)
    for f in ("manifest.json", "ledger.json"):
        (run / f).unlink()
    shutil.rmtree(run / "scores")
    v = build_view(run)
    assert v.accounting is None and v.landscapes is None and v.manifest is None and not v.attacks
    out = render_run(run, out_dir=tmp_path / "out", pdf_engine="matplotlib")
    html = out["html"].read_text()
    for what in ("Attacks: not run", "Estimators: not run", "Accounting cross-check: not run",
                 "Landscape probes: not run", "manifest.json: not available"):
        assert what in html, what
    assert "<figure" not in html
    report = json.loads(out["json"].read_text())
    assert report["report"]["sections_not_run"] == ["attacks", "estimates", "accounting", "landscapes", "manifest"]
    assert "not run" in out["md"].read_text()


def test_missing_scores_file_is_an_integrity_error_unless_unverified(tmp_path):
    """A scores file the manifest lists, then deleted: an integrity error (issue 13 item 11: it was
    silently dropped); with verify=False (--no-verify) the other figures are still drawn."""
    run = copy_run(tmp_path)
    (run / "scores" / "zlib.npz").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        build_view(run)
    v = build_view(run, verify=False)
    assert v.attacks[0].member_scores is not None and v.attacks[1].member_scores is None
    html = render_run(run, formats=("html",), out_dir=tmp_path / "out", verify=False)["html"].read_text()
    assert html.count("<figure") == 4


@pytest.mark.parametrize("edit, key", [
    (lambda a: a.update(attacks="loss"), "attacks"),
    (lambda a: a["attacks"][0].update(auc="high"), "attacks[0].auc"),
    (lambda a: a["estimates"][1].update(epsilon_lb=None), "estimates[1].epsilon_lb"),
    (lambda a: a["estimates"][0].update(is_bound="yes"), "estimates[0].is_bound"),
    (lambda a: a["verdict"].update(status="maybe"), "verdict.status"),
    (lambda a: a["landscapes"]["curves"][0].update(loss_mean=[1.0]), "landscapes.curves[0].loss_mean"),
    (lambda a: a["attacks"][0].update(roc_tpr=[0.0]), "roc_fpr and roc_tpr"),
    (lambda a: a.pop("claim"), "claim"),
    (lambda a: a.update(schema_version=7), "schema_version"),
])
def test_malformed_audit_is_integrity_error(tmp_path, edit, key):
    run = copy_run(tmp_path, edit)
    with pytest.raises(IntegrityError) as exc:
        render_run(run, formats=("md",), out_dir=tmp_path / "out")
    msg = str(exc.value)
    assert key in msg and "\n" not in msg


def test_not_json_is_integrity_error(tmp_path):
    run = copy_run(tmp_path)
    (run / "audit.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        build_view(run)


def test_edited_audit_without_rehash_is_integrity_error(tmp_path):
    run = copy_run(tmp_path, lambda a: a["verdict"].update(status="pass"), rehash=False)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        build_view(run)
    assert build_view(run, verify=False).verdict.status == "pass"


def test_edited_scores_file_is_integrity_error(tmp_path):
    from dp_audit.io import save_npz

    run = copy_run(tmp_path)
    save_npz(run / "scores" / "loss.npz", scores=[0.0, 1.0], member=[False, True])
    with pytest.raises(IntegrityError, match="loss.npz"):
        build_view(run)


def test_missing_run_or_audit_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="run directory not found"):
        build_view(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="audit.json not found"):
        build_view(tmp_path / "empty")


def test_infinite_claim_renders(tmp_path):
    def edit(a):
        a["claim"]["epsilon"] = "inf"
        a["verdict"] = None

    run = copy_run(tmp_path, edit)
    v = build_view(run, verify=False)
    assert v.claimed_epsilon == float("inf") and not any(e.exceeds_claim for e in v.estimates)
    md = render_run(run, formats=("md", "html"), out_dir=tmp_path / "out", verify=False)["md"].read_text()
    assert "claimed ε ∞" in md


def test_fdp_estimates_name_their_null(tmp_path):
    """docs/estimators.md: a μ-GDP-null bound refutes only Gaussian-shaped claims, so the report
    says which null each fdp bound used."""
    def edit(audit):
        fdp = [e for e in audit["estimates"] if e["method"] == "fdp"]
        assert fdp
        fdp[0].setdefault("details", {})["null"] = "gdp"
        for e in fdp[1:]:
            e.setdefault("details", {})["null"] = "eps-delta"

    run = copy_run(tmp_path, edit)
    shown = [e.display for e in build_view(run).estimates if e.method == "fdp"]
    assert shown[0] == "fdp (μ-GDP null)"
    assert all(s == "fdp ((ε, δ) null)" for s in shown[1:])
    render_run(run, formats=("html", "md"))
    assert "fdp (μ-GDP null)" in (run / "report.html").read_text()
    assert "fdp (μ-GDP null)" in (run / "report.md").read_text()
