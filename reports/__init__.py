"""dp_audit.reports (DESIGN.md §1, §9; docs/reports.md). Import it as `dp_audit.reports`, never under its bare folder name."""

if __name__ != "dp_audit.reports":  # pragma: no cover - refuses a second copy under the bare name
    raise ImportError(f"import this package as 'dp_audit.reports', not {__name__!r} (DESIGN.md §1)")

# Audit reports rendered from a run's result files alone (DESIGN.md §9, docs/reports.md):
#   render_run("runs/r1")  -> report.html, report.pdf, report.md, report.json in the run directory
#   render_comparison(["runs/a", "runs/b"], out_dir="runs")
# FORMATS maps a format name to a ReportFormat (file name + renderers). This package never imports
# torch, trainers or attacks and never loads a model; renderer modules (matplotlib, Jinja2,
# WeasyPrint) are imported on first use.

from dataclasses import dataclass as _dataclass  # noqa: E402
from pathlib import Path as _Path  # noqa: E402
from typing import Any as _Any, Callable as _Callable, Iterable as _Iterable  # noqa: E402

from dp_audit.errors import UsageError as _UsageError  # noqa: E402
from dp_audit.registry import Registry as _Registry  # noqa: E402


@_dataclass(frozen=True)
class ReportFormat:
    """One output format: ``fmt(view, **opts) -> bytes`` for a run, ``fmt.comparison(cmp, **opts)``
    for a comparison of runs; written to ``filename``."""

    name: str
    filename: str
    render: _Callable[..., bytes]
    render_comparison: _Callable[..., bytes]

    def __call__(self, view, **opts: _Any) -> bytes:
        return self.render(view, **opts)

    def comparison(self, cmp, **opts: _Any) -> bytes:
        return self.render_comparison(cmp, **opts)


FORMATS: _Registry[ReportFormat] = _Registry("report format")


def _html(view, *, specs=None, **_: _Any) -> bytes:
    from dp_audit.reports.html import embed, render_html

    return render_html(view, figures=None if specs is None else embed(specs)).encode("utf-8")


def _html_cmp(cmp, *, specs=None, **_: _Any) -> bytes:
    from dp_audit.reports.html import embed, render_comparison_html

    return render_comparison_html(cmp, figures=None if specs is None else embed(specs)).encode("utf-8")


def _pdf(view, *, specs=None, pdf_engine: str = "auto", **_: _Any) -> bytes:
    from dp_audit.reports.pdf import render_pdf

    return render_pdf(view, engine=pdf_engine, specs=specs)


def _pdf_cmp(cmp, *, specs=None, pdf_engine: str = "auto", **_: _Any) -> bytes:
    from dp_audit.reports.pdf import render_comparison_pdf

    return render_comparison_pdf(cmp, engine=pdf_engine, specs=specs)


def _md(view, **_: _Any) -> bytes:
    from dp_audit.reports.markdown import render_markdown

    return render_markdown(view).encode("utf-8")


def _md_cmp(cmp, **_: _Any) -> bytes:
    from dp_audit.reports.markdown import render_comparison_markdown

    return render_comparison_markdown(cmp).encode("utf-8")


def _json(view, **_: _Any) -> bytes:
    from dp_audit.reports.jsonfmt import render_json

    return render_json(view).encode("utf-8")


def _json_cmp(cmp, **_: _Any) -> bytes:
    from dp_audit.reports.jsonfmt import render_comparison_json

    return render_comparison_json(cmp).encode("utf-8")


for _fmt in (ReportFormat("html", "report.html", _html, _html_cmp), ReportFormat("pdf", "report.pdf", _pdf, _pdf_cmp),
             ReportFormat("md", "report.md", _md, _md_cmp), ReportFormat("json", "report.json", _json, _json_cmp)):
    FORMATS.register(_fmt.name)(_fmt)


def parse_formats(formats: str | _Iterable[str]) -> tuple[str, ...]:
    """``"html,pdf"`` or an iterable -> validated names (UsageError naming the known ones)."""
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f and f.strip()]
    if not names:
        raise _UsageError(f"no report format given; known: {', '.join(FORMATS.names())}")
    for n in names:
        FORMATS.get(n)
    return tuple(dict.fromkeys(names))


def _write(outputs: dict, names, out_dir: _Path, render_one) -> dict[str, _Path]:
    from dp_audit.io import atomic_write_bytes

    specs = None
    if {"html", "pdf"} & set(names):
        specs = render_one("figures")
    for name in names:
        fmt = FORMATS.get(name)
        outputs[name] = atomic_write_bytes(out_dir / fmt.filename, render_one(fmt, specs))
    return outputs


def render_run(run_dir, *, formats=("html", "pdf", "md", "json"), out_dir=None, pdf_engine: str = "auto",
               verify: bool = True) -> dict[str, _Path]:
    """Render one run's report into ``out_dir`` (default: the run directory), atomically.

    Returns ``{format: path}``. Missing run dir or audit.json: UsageError; malformed audit.json or a
    hash mismatch of a file it reads: IntegrityError. ``pdf_engine``: auto | weasyprint | matplotlib.
    """
    from dp_audit.reports.viewmodel import build_view

    names = parse_formats(formats)
    view = build_view(run_dir, verify=verify)
    out = _Path(out_dir) if out_dir is not None else _Path(run_dir)

    def one(fmt, specs=None):
        if fmt == "figures":
            from dp_audit.reports.figures import report_figures

            return report_figures(view)
        return fmt(view, specs=specs, pdf_engine=pdf_engine)

    return _write({}, names, out, one)


def render_comparison(run_dirs, *, out_dir, formats=("html", "md"), pdf_engine: str = "auto",
                      verify: bool = True) -> dict[str, _Path]:
    """One comparison report of several runs (table + overlaid ROC and landscape curves)."""
    from dp_audit.reports.viewmodel import build_comparison

    names = parse_formats(formats)
    if out_dir is None:
        raise _UsageError("a comparison report needs an output directory (--out)")
    out = _Path(out_dir)
    cmp = build_comparison(list(run_dirs), verify=verify, out_dir=out)

    def one(fmt, specs=None):
        if fmt == "figures":
            from dp_audit.reports.figures import comparison_figures

            return comparison_figures(cmp.views)
        return fmt.comparison(cmp, specs=specs, pdf_engine=pdf_engine)

    return _write({}, names, out, one)


__all__ = ["FORMATS", "ReportFormat", "render_run", "render_comparison", "parse_formats"]
