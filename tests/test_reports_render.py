"""Rendering every report format from the stored fixture run (tests/fixtures/run_fixture, made by
tests/fixtures/make_run_fixture.py): HTML structure, escaping, PDF pages and text, Markdown, JSON."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dp_audit.reports import FORMATS, render_run

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
N_FIGURES = 4  # roc, histograms, epsilon, landscape: the fixture has data for each
VERDICT = "FAIL"
VERDICT_TEXT = "highest valid ε_LB 3.454 (fdp on loss)"  # verdict.epsilon_lb_max in the fixture's audit.json
EVIL = "<script>alert(1)</script>"
VOID = {"meta", "br", "img", "hr", "link", "input", "col", "source", "wbr", "area", "base"}


def copy_run(tmp_path: Path, edit=None, name: str = "run") -> Path:
    """A copy of the fixture; ``edit(audit)`` changes audit.json and the manifest is re-hashed."""
    from dp_audit.manifest import add_artifacts

    run = tmp_path / name
    shutil.copytree(FIXTURE, run)
    if edit is not None:
        audit = json.loads((run / "audit.json").read_text())
        edit(audit)
        (run / "audit.json").write_text(json.dumps(audit))
        add_artifacts(run, ["audit.json"])
    return run


class Structure(HTMLParser):
    """Counts elements and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.text: list[str] = []
        self.svg_in_figure = 0

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.ids += [v for k, v in attrs if k == "id"]
        if tag == "svg" and self.stack and self.stack[-1] == "figure":
            self.svg_in_figure += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.ids += [v for k, v in attrs if k == "id"]

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        if not self.stack or self.stack[-1] not in ("style", "script"):
            self.text.append(data)


def parse(html: str) -> Structure:
    p = Structure()
    p.feed(html)
    p.close()
    return p


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return render_run(FIXTURE, out_dir=out)


def test_registry_lists_every_format():
    assert FORMATS.names() == ["html", "pdf", "md", "json"]
    assert [FORMATS.get(n).filename for n in FORMATS] == ["report.html", "report.pdf", "report.md", "report.json"]


def test_render_run_writes_every_format(rendered):
    assert set(rendered) == {"html", "pdf", "md", "json"}
    for name, path in rendered.items():
        assert path.is_file() and path.stat().st_size > 0, name
        assert path.name == FORMATS.get(name).filename
    assert not list(rendered["html"].parent.glob(".*.tmp"))  # atomic writes left no temp files


def test_html_parses_and_contains_verdict_and_every_figure(rendered):
    html = rendered["html"].read_text(encoding="utf-8")
    p = parse(html)
    assert p.errors == [] and p.stack == []
    assert html.startswith("<!DOCTYPE html>")
    assert p.counts.get("figure") == N_FIGURES
    assert p.svg_in_figure == N_FIGURES  # each figure embedded as inline SVG
    assert p.counts.get("script", 0) == 0 and p.counts.get("link", 0) == 0  # self-contained
    text = " ".join(p.text)
    assert VERDICT in text and VERDICT_TEXT in text
    assert "estimate, not a bound" in text
    assert "awp" in text and "Unaccounted parts of training" in text
    assert "dp-audit train" in text  # the reproduce command
    dupes = {i for i in p.ids if p.ids.count(i) > 1}
    assert not dupes, f"inline SVGs share ids: {sorted(dupes)[:5]}"


def test_html_uses_colour_blind_palette(rendered):
    html = rendered["html"].read_text(encoding="utf-8").lower()
    for colour in ("#0072b2", "#d55e00"):  # Okabe-Ito blue and vermillion
        assert colour in html


def test_html_escapes_model_and_attack_names(tmp_path):
    def edit(audit):
        audit["model"]["name"] = EVIL
        audit["attacks"][0]["name"] = EVIL
        audit["reproduce"] = f"dp-audit run --run '{EVIL}'"

    run = copy_run(tmp_path, edit)
    out = render_run(run, formats=("html", "md"), out_dir=tmp_path / "out")
    html = out["html"].read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    p = parse(html)
    assert p.errors == [] and p.counts.get("script", 0) == 0
    md_html = _markdown_html(out["md"].read_text(encoding="utf-8"))
    assert "<script" not in md_html and "&lt;script&gt;" in md_html


def test_pdf_weasyprint_pages_and_text(rendered):
    pypdf = pytest.importorskip("pypdf")
    pytest.importorskip("weasyprint")
    reader = pypdf.PdfReader(rendered["pdf"])
    # sections start pages: summary+attacks, histograms+ε, accounting+landscape, manifest
    assert len(reader.pages) == 4
    text = reader.pages[0].extract_text()
    assert VERDICT in text and "3.454" in text and "claim refuted" in text


def test_pdf_fallback_pages_and_text(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    out = render_run(FIXTURE, formats=("pdf",), out_dir=tmp_path, pdf_engine="matplotlib")
    reader = pypdf.PdfReader(out["pdf"])
    # one summary text page, one page per figure, one details page
    assert len(reader.pages) == 1 + N_FIGURES + 1
    text = reader.pages[0].extract_text()
    assert "FAIL" in text and "claim refuted" in text and "3.454" in text
    assert "Reproduce" in reader.pages[-1].extract_text()


def test_pdf_page_count_is_deterministic(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    a = render_run(FIXTURE, formats=("pdf",), out_dir=tmp_path / "a", pdf_engine="matplotlib")["pdf"]
    b = render_run(FIXTURE, formats=("pdf",), out_dir=tmp_path / "b", pdf_engine="matplotlib")["pdf"]
    assert len(pypdf.PdfReader(a).pages) == len(pypdf.PdfReader(b).pages)
    assert a.read_bytes() == b.read_bytes()


def test_markdown_summary(rendered):
    md = rendered["md"].read_text(encoding="utf-8")
    assert md.startswith("## ❌ dp-audit: FAIL")
    assert VERDICT_TEXT in md.replace("\\", "")  # untrusted text is backslash-escaped (ε\_LB)
    assert "| estimator | attack | ε_LB | α | kind | ceiling | vs claim |" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ("| loss |" in ln or "| zlib |" in ln)]
    assert len(rows) == 6 + 2  # 3 estimators x 2 attacks, then 2 attack-metric rows
    assert "estimate, not a bound" in md
    assert "**awp**" in md


def test_json_copy_keeps_audit_and_adds_verdict(rendered):
    report = json.loads(rendered["json"].read_text(encoding="utf-8"))
    audit = json.loads((FIXTURE / "audit.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in report.items() if k != "report"} == audit
    assert report["report"]["status"] == "fail"
    assert report["report"]["verdict_line"].startswith("FAIL: claim refuted")
    assert report["report"]["sections_not_run"] == []


def test_unknown_format_is_usage_error(tmp_path):
    from dp_audit.errors import UsageError

    with pytest.raises(UsageError, match="known: html, json, md, pdf"):
        render_run(FIXTURE, formats=("html", "docx"), out_dir=tmp_path)


def test_svg_is_deterministic():
    from dp_audit.reports.figures import report_figures, to_svg
    from dp_audit.reports.viewmodel import build_view

    view = build_view(FIXTURE)
    a = [to_svg(s.figure, salt=s.key) for s in report_figures(view)]
    b = [to_svg(s.figure, salt=s.key) for s in report_figures(view)]
    assert a == b
    assert all(re.match(r"<svg[^>]*viewBox=", s) for s in a)


MD_EVIL_ID = "x` [pwn](https://evil.example) ![i](https://evil.example/i.png) <b>b</b> | ` y"
MD_EVIL_NAME = "# [pwn](https://evil.example) <img src=x> *a* | b"


def _markdown_html(md: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(md)


def test_markdown_neutralises_run_id_and_names(tmp_path):
    """Bug caught (issue 13 item 10): a backtick in the run id closed the code span in report.md (which
    CI appends to the job summary) and let `[text](url)`, images and raw HTML through; a model name
    opened a link. Rendered with a CommonMark parser: no link, image or HTML element survives, and the
    run id shows verbatim inside one code element."""
    def edit(audit):
        audit["run_id"] = MD_EVIL_ID
        audit["model"]["name"] = MD_EVIL_NAME
        audit["attacks"][0]["name"] = MD_EVIL_NAME

    run = copy_run(tmp_path, edit)
    md = render_run(run, formats=("md",), out_dir=tmp_path / "out")["md"].read_text(encoding="utf-8")
    html = _markdown_html(md)
    for tag in ("<a ", "<img", "<b>", "<h1"):
        assert tag not in html, tag
    assert f"<code>{MD_EVIL_ID.replace('<', '&lt;').replace('>', '&gt;')}</code>" in html
    assert "[pwn](https://evil.example)" in html  # shown as text


def test_uncounted_gdp_is_labelled_with_its_validity_not_as_a_point_estimate(tmp_path):
    """Bug caught: a μ-GDP test reported under an (ε, δ) claim (gate: is_bound false,
    details.validity set) was labelled "estimate, not a bound" like `raw`, hiding why it is not
    counted."""
    from dp_audit.estimate import MU_GDP_ONLY

    def edit(audit):
        e = dict(audit["estimates"][0])
        e.update(method="gdp", is_bound=False, epsilon_lb=9.0, details={"validity": MU_GDP_ONLY, "counted": False})
        audit["estimates"].append(e)

    run = copy_run(tmp_path, edit)
    md = render_run(run, formats=("md",), out_dir=tmp_path / "out")["md"].read_text(encoding="utf-8")
    row = next(ln for ln in md.splitlines() if ln.startswith("| gdp"))
    assert "μ-GDP claim" in row and "estimate, not a bound" not in row and "not counted" in row
