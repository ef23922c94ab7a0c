"""The HTML report: Jinja2 templates in ``templates/`` with autoescape on, rendered into one
self-contained file (CSS inlined, figures as inline SVG) that prints on A4 (DESIGN.md §9)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from dp_audit import __version__
from dp_audit.reports.viewmodel import ComparisonView, ReportView, fmt_eps, fmt_num

TEMPLATES = Path(__file__).parent / "templates"
ACCOUNTANT_NAMES = {"rdp": "RDP (Opacus)", "prv": "PRV (Opacus)", "pld": "PLD (dp_accounting)",
                    "pure": "pure ε (closed form)"}


@dataclass(frozen=True)
class EmbeddedFigure:
    key: str
    title: str
    caption: str
    svg: Markup  # matplotlib's SVG (it escapes every text it draws); the only markup marked safe


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    env.filters["eps"] = lambda x, digits=3: fmt_eps(x, digits)
    env.filters["num"] = lambda x, spec=".3g": fmt_num(x, spec)
    return env


def embed(specs) -> list[EmbeddedFigure]:
    """FigureSpec list -> inline SVG figures (each with its own SVG id salt)."""
    from dp_audit.reports.figures import to_svg

    return [EmbeddedFigure(s.key, s.title, s.caption, Markup(to_svg(s.figure, salt=f"dp-audit-{s.key}")))
            for s in specs]


def render_html(view: ReportView, *, figures: Sequence[EmbeddedFigure] | None = None) -> str:
    """The report of one run as one HTML string."""
    if figures is None:
        from dp_audit.reports.figures import report_figures

        figures = embed(report_figures(view))
    figs = {f.key: f for f in figures}
    can = dict(view.canaries)
    m = can.get("m", "?")
    canaries_text = (f"{m} canaries ({can.get('n_members', '?')} members), kind {can.get('kind', 'unknown')}; "
                     f"threat model {view.threat_model}. TPR/FPR read from the ROC recorded in audit.json.")
    ceiling_text = ", ".join(f"{k} {fmt_eps(v)}" for k, v in view.ceiling)
    return environment().get_template("report.html.j2").render(
        view=view, figs=_Figs(figs), tool_version=__version__, canaries_text=canaries_text, m_canaries=m,
        ceiling_text=ceiling_text, accountant_names=ACCOUNTANT_NAMES)


def render_comparison_html(cmp: ComparisonView, *, figures: Sequence[EmbeddedFigure] | None = None) -> str:
    if figures is None:
        from dp_audit.reports.figures import comparison_figures

        figures = embed(comparison_figures(cmp.views))
    return environment().get_template("comparison.html.j2").render(cmp=cmp, figures=list(figures),
                                                                  tool_version=__version__)


class _Figs(dict):
    """``figs.roc`` in templates: None (not an error) when a figure was not drawn."""

    def __getattr__(self, key: str):
        return self.get(key)


__all__ = ["render_html", "render_comparison_html", "environment", "embed", "EmbeddedFigure"]
