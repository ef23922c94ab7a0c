"""``dp-audit report STEP_AUDIT_DIR [--pdf]``: the report of one step-level audit (issue 17
leftovers, docs/awp-leak.md "Report of one step audit"). Each test names the bug it catches."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dp_audit.cli import main
from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    root = tmp_path_factory.mktemp("step-reports")
    out = {}
    for name in ("dpflat-awp-paper", "dpsgd-dirac"):
        out[name] = root / name
        step_audit(build(name), trials=2000, seed=0, progress=False, out=out[name])
    return out


def _fresh(audits, name, tmp_path):
    import shutil

    d = tmp_path / name
    shutil.copytree(audits[name], d)
    return d


@pytest.mark.parametrize("name,refuted", [("dpflat-awp-paper", True), ("dpsgd-dirac", False)])
def test_the_html_report_shows_claim_bounds_verdict_histogram_and_hashes(audits, tmp_path, capsys, name, refuted):
    """Bug caught: a report whose verdict is not the audit's (e.g. always "not refuted", or read
    from a field a consistent edit could change without the bounds), an estimator or its validity
    label missing, the histogram or the manifest hashes left out."""
    d = _fresh(audits, name, tmp_path)
    assert main(["report", str(d)]) == 0
    html = (d / "report.html").read_text()
    res = json.loads((d / "step_audit.json").read_text())
    manifest = json.loads((d / "manifest.json").read_text())
    assert res["refuted"] is refuted
    assert (">REFUTED<" in html) is refuted and (">NOT REFUTED<" in html) is (not refuted)
    assert f"{res['claim']['epsilon']:.3f}" in html and "N per side</b> 2000" in html
    for e in res["estimates"]:
        assert f"<td>{e['method']}</td><td class=\"num\">{e['epsilon_lb']:.3f}" in html
    assert "valid only under a μ-GDP claim" in html and "valid for any mechanism" in html
    assert "<svg" in html and "Score histograms" in html
    for f in ("trials.npz", "step_audit.json"):
        assert manifest["artifacts"][f] in html
    assert "calibration trials per side" in html and res["construction"]["name"] in html
    assert "wrote" in capsys.readouterr().out and not (d / "report.pdf").exists()


def test_construction_text_is_escaped(tmp_path):
    """Bug caught: the construction's description (a user's own Construction: any text) rendered
    as HTML: a <script> in it would run in every browser that opens the report."""
    cons = dataclasses.replace(build("gaussian"), name="evil", description='<script>alert("x")</script> & co',
                               info={"note": "<img src=x onerror=alert(1)>"})
    d = tmp_path / "s"
    step_audit(cons, trials=500, seed=0, progress=False, out=d)
    assert main(["report", str(d)]) == 0
    html = (d / "report.html").read_text()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html


def test_a_tampered_trials_file_is_exit_3_and_no_report(audits, tmp_path, capsys):
    """Bug caught: a report rendered from a directory whose trials changed after the audit (the
    report would show bounds the trials no longer give); also a consistent edit (hash updated,
    verdict flipped) must be refused: the reader recomputes the bounds."""
    d = _fresh(audits, "dpflat-awp-paper", tmp_path)
    z = dict(np.load(d / "trials.npz", allow_pickle=False))
    z["scores_d1"] = z["scores_d0"].copy()
    np.savez(d / "trials.npz", **z)
    assert main(["report", str(d), "--pdf"]) == 3
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (d / "report.html").exists() and not (d / "report.pdf").exists()
    # a consistent edit: verdict flipped and every hash recomputed
    from dp_audit.manifest import add_artifacts

    d2 = _fresh(audits, "dpflat-awp-paper", tmp_path / "b")
    res = json.loads((d2 / "step_audit.json").read_text())
    res["refuted"], res["verdict"]["status"] = False, "pass"
    (d2 / "step_audit.json").write_text(json.dumps(res))
    add_artifacts(d2, ["step_audit.json"])
    assert main(["report", str(d2)]) == 3
    assert not (d2 / "report.html").exists()


@pytest.mark.parametrize("engine", ["matplotlib", "auto"])
def test_the_pdf_opens_and_contains_the_verdict(audits, tmp_path, engine):
    """Bug caught: a PDF that does not open, lacks the verdict or the construction (e.g. the
    fallback engine given the run report's lines), or is written without --pdf."""
    import pypdf

    d = _fresh(audits, "dpflat-awp-paper", tmp_path)
    assert main(["report", str(d), "--pdf", "--pdf-engine", engine]) == 0
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(d / "report.pdf").pages)
    assert "REFUTED" in text and "dpflat-awp-paper" in text
    assert "clopper-pearson" in text and "gdp" in text


def test_usage_errors(audits, tmp_path, capsys):
    """Bug caught: a step-audit directory mixed into a comparison, or an unsupported format,
    failing later (exit 4) or silently producing a run report."""
    d = _fresh(audits, "dpsgd-dirac", tmp_path)
    assert main(["report", str(d), "--run", str(d)]) == 2
    assert main(["report", str(d), "--format", "md"]) == 2
    assert main(["report"]) == 2
    assert not (d / "report.html").exists()


def test_statistic_text_is_drawn_literally_not_as_mathtext(tmp_path):
    """Bug caught (review of issue 17): the construction's ``info["statistic"]`` (a user's own
    text, the x-axis label of the score histogram) was parsed by matplotlib as mathtext: a label
    such as ``$\\hat{s}$ of $\\Delta$ \\undefined`` or an odd ``$`` crashed the report (ValueError,
    exit 4) or rendered "$5 … $10" as italics. It is now drawn literally: the report renders
    (exit 0), the label's text is in the SVG as typed, and markup in it stays escaped. Seen
    failing (exit 4) without ``parse_math=False``."""
    label = r"$\undefinedcmd$ of <b>Δ</b> costs $5 or $10"
    cons = dataclasses.replace(build("gaussian"), name="mathy", info={"statistic": label})
    d = tmp_path / "s"
    step_audit(cons, trials=500, seed=0, progress=False, out=d)
    assert main(["report", str(d)]) == 0
    html = (d / "report.html").read_text()
    assert r"$\undefinedcmd$ of &lt;b&gt;Δ&lt;/b&gt; costs $5 or $10" in html
    assert "<b>Δ</b>" not in html


def test_a_k_step_report_names_the_composed_claim_not_a_per_step_one(tmp_path):
    """Bug caught (review of issue 17): the report of a 3-step audit called the composed claim
    (ε of √3·μ, or the PLD of 3 Laplace steps) the "per-step claim", in the verdict sentence and
    the facts, and took k from the construction's info before the verified record. Now it says
    "claim of 3 composed steps", shows the per-step claim and its accountant, and k comes from
    read_step_audit. Seen failing ("The per-step claim ε = 2.9…") before the fix."""
    d = tmp_path / "k3"
    step_audit(build("dpzo-laplace"), trials=200, seed=0, progress=False, steps=3, out=d)
    assert main(["report", str(d)]) == 0
    html = (d / "report.html").read_text()
    assert "per-step claim ε" not in html and "The per-step claim" not in html
    assert "The claim of 3 composed steps ε = " in html
    assert "Laplace ε0 1; composed over 3 steps by pld-laplace" in html
    assert "<b>steps</b> 3" in html
