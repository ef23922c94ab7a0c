"""The PDF report: the HTML report printed by WeasyPrint (the ``[pdf]`` extra), or, when
WeasyPrint is not importable (or ``engine="matplotlib"``), a pure-Python fallback with
matplotlib's ``PdfPages``: text pages (verdict, tables, manifest) and one page per figure.

Both are deterministic in page count for a given audit: the HTML starts its major sections on new
pages (``.pagebreak``) and the fallback paginates a fixed number of lines per page.
"""

from __future__ import annotations

import io
import textwrap
from typing import Sequence

from dp_audit.errors import UsageError
from dp_audit.reports.viewmodel import ComparisonView, ReportView, fmt_eps, fmt_num

ENGINES = ("auto", "weasyprint", "matplotlib")
A4_IN = (8.27, 11.69)
LINES_PER_PAGE = 62
WRAP = 100


def weasyprint_available() -> bool:
    try:
        import weasyprint  # noqa: F401
    except Exception:  # ImportError, or OSError when its system libraries (pango) are missing
        return False
    return True


def _engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UsageError(f"unknown PDF engine {engine!r}; known: {', '.join(ENGINES)}")
    if engine == "auto":
        return "weasyprint" if weasyprint_available() else "matplotlib"
    if engine == "weasyprint" and not weasyprint_available():
        raise UsageError("PDF engine 'weasyprint' is not installed: pip install 'dp-audit[pdf]', or use the "
                         "matplotlib fallback")
    return engine


def _weasy(html: str) -> bytes:
    import logging

    import weasyprint

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return weasyprint.HTML(string=html, base_url=None).write_pdf()


def render_pdf(view: ReportView, *, engine: str = "auto", specs=None) -> bytes:
    """PDF bytes of one run's report. ``specs``: already drawn FigureSpecs (reused, not redrawn)."""
    from dp_audit.reports.figures import report_figures

    specs = report_figures(view) if specs is None else list(specs)
    if _engine(engine) == "weasyprint":
        from dp_audit.reports.html import embed, render_html

        return _weasy(render_html(view, figures=embed(specs)))
    return _fallback(_report_lines(view), [s for s in specs], _detail_lines(view))


def render_comparison_pdf(cmp: ComparisonView, *, engine: str = "auto", specs=None) -> bytes:
    from dp_audit.reports.figures import comparison_figures

    specs = comparison_figures(cmp.views) if specs is None else list(specs)
    if _engine(engine) == "weasyprint":
        from dp_audit.reports.html import embed, render_comparison_html

        return _weasy(render_comparison_html(cmp, figures=embed(specs)))
    return _fallback(_comparison_lines(cmp), specs, [])


# ---------------------------------------------------------------------------------------------
# fallback: matplotlib PdfPages


Line = tuple[str, str]  # (style, text): "h1" | "h2" | "text" | "mono"


def _wrap(style: str, text: str, indent: str = "") -> list[Line]:
    width = WRAP if style in ("text", "mono") else 80
    parts = textwrap.wrap(text, width=width, subsequent_indent=indent + "  ", initial_indent=indent,
                          break_long_words=True, break_on_hyphens=False) or [""]
    return [(style, p) for p in parts]


def _table(rows: Sequence[Sequence[str]]) -> list[Line]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out += _wrap("mono", "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            out.append(("mono", "  ".join("-" * w for w in widths)))
    return out


def _report_lines(view: ReportView) -> list[Line]:
    v = view.verdict
    lines: list[Line] = [("h1", f"Privacy audit: {view.model_name}")]
    lines += _wrap("text", f"{view.trainer_mode} · run {view.run_id} · audited {view.created}")
    lines += [("text", ""), ("h2", f"Verdict: {v.label}")]
    lines += _wrap("text", v.line)
    lines += _wrap("text", f"claimed ε {fmt_eps(v.claimed_epsilon)}, highest valid ε_LB {fmt_eps(v.epsilon_lb_max)}, "
                           f"α {fmt_num(v.alpha)}, δ {v.delta:g}, threat model {v.threat_model}, accountant "
                           f"{view.accountant}. A lower bound can refute a claim, never prove it.")
    lines += [("text", ""), ("h2", "Unaccounted parts of training")]
    if view.unaccounted:
        for u in view.unaccounted:
            lines += _wrap("text", f"- {u.component}: {u.reason} (from the {u.source})")
    else:
        lines.append(("text", "None listed."))
    lines += [("text", ""), ("h2", "Membership inference attacks")]
    if view.attacks:
        rows = [("attack", "AUC", "95% CI", "TPR@0.1%FPR", "TPR@1%FPR", "members/non")]
        for a in view.attacks:
            ci = f"{a.auc_ci[0]:.3f}-{a.auc_ci[1]:.3f}" if a.auc_ci else "n/a"
            rows.append((a.name, f"{a.auc:.3f}", ci, fmt_num(a.tpr_at(0.001), ".3f"), fmt_num(a.tpr_at(0.01), ".3f"),
                         f"{a.n_members}/{a.n_nonmembers}"))
        lines += _table(rows)
    else:
        lines.append(("text", "Attacks: not run."))
    lines += [("text", ""), ("h2", "Empirical ε lower bounds")]
    if view.estimates:
        rows = [("estimator", "attack", "ε_LB", "α", "kind", "ceiling", "vs claim")]
        for e in view.estimates:
            vs = "not counted" if not e.is_bound else ("EXCEEDS" if e.exceeds_claim else "below")
            rows.append((e.method, e.attack or "-", fmt_eps(e.epsilon_lb), f"{e.alpha:.3g}", e.label,
                         fmt_eps(e.ceiling) if e.is_bound else "-", vs))
        lines += _table(rows)
        lines += _wrap("text", "ceiling: the largest ε_LB a perfect attack could show with these canaries.")
    else:
        lines.append(("text", "Estimators: not run."))
    return lines


def _secrets_lines(view: ReportView) -> list[Line]:
    sec = view.secrets
    if sec is None:
        return []
    lines: list[Line] = [("h2", "Secret canaries: exposure and extraction")]
    lines += _wrap("text", f"prefix {sec.prefix!r}, |R| = {sec.space_size if sec.space_size is not None else 'unknown'}"
                           + (f", {sec.n_candidates} candidates (sampled exposure at most {fmt_num(sec.max_sampled)} "
                              f"bits; unseen secrets average {fmt_num(sec.expected_unseen, '.3f')})" if sec.n_candidates else "")
                           + (f", extraction: greedy + {sec.samples} samples" if sec.samples is not None else "")
                           + ". Extrapolated exposure: skew-normal fit, an estimate, not a bound.")
    if sec.means or sec.extraction_totals:
        rows = [("statistic", "members", "non-members")]
        rows += [(k, fmt_num(a, ".3f"), fmt_num(b, ".3f")) for k, a, b in sec.means]
        rows += [(f"extraction: {k}", str(a), str(b)) for k, a, b in sec.extraction_totals]
        lines += _table(rows)
    if sec.extraction_note:
        lines += _wrap("text", sec.extraction_note)
    if sec.bounds:
        rows = [("estimator", "attack", "ε_LB", "vs claim")]
        rows += [(e.method, e.attack or "-", fmt_eps(e.epsilon_lb),
                  "not counted" if not e.is_bound else ("EXCEEDS" if e.exceeds_claim else "below")) for e in sec.bounds]
        lines += _table(rows)
    if sec.rows:
        rows = [("canary", "member", "exposure", "extrapolated", "greedy", "sampled hits")]
        for r in sec.top_rows(20):
            rows.append((r.id, "yes" if r.member else "no", fmt_num(r.exposure, ".2f"),
                         fmt_num(r.exposure_extrapolated, ".2f"),
                         "-" if r.greedy_hit is None else ("extracted" if r.greedy_hit else "no"),
                         "-" if r.sampled_hits is None else str(r.sampled_hits)))
        lines += _table(rows)
    lines.append(("text", ""))
    return lines


def _detail_lines(view: ReportView) -> list[Line]:
    lines: list[Line] = _secrets_lines(view) + [("h2", "Accounting cross-check")]
    acc = view.accounting
    if acc is not None:
        rows = [("accountant", "ε")] + [(k, "n/a" if x is None else fmt_eps(x)) for k, x in acc.methods]
        lines += _table(rows)
        lines.append(("text", f"claimed ε {fmt_eps(acc.claimed)} at δ {acc.delta:g}: "
                              f"{'consistent' if acc.consistent else 'not consistent'}"))
        for f in acc.flags:
            lines += _wrap("text", f"- {f}")
    else:
        lines.append(("text", "Accounting cross-check: not run."))
    lines += [("text", ""), ("h2", "Loss landscape")]
    if view.landscapes is not None:
        lines += _table([("quantity", "value")] + list(view.landscapes.summary)) if view.landscapes.summary else []
        lines.append(("text", f"{len(view.landscapes.curves)} curve(s): see the figure pages."))
    else:
        lines.append(("text", "Landscape probes: not run."))
    lines += [("text", ""), ("h2", "What was audited")]
    lines += [("mono", f"{k:<16} {val}") for k, val in view.model]
    lines += [("mono", f"canaries.{k:<7} {val}") for k, val in view.canaries]
    man = view.manifest
    if man is not None:
        lines += [("mono", f"{'run id':<16} {man.run_id}"), ("mono", f"{'created':<16} {man.created}"),
                  ("mono", f"{'data fingerprint':<16} {man.data_fingerprint or 'not recorded'}"),
                  ("mono", f"{'seeds':<16} " + ", ".join(f"{k}={s}" for k, s in man.seeds))]
        lines += _wrap("mono", f"{'environment':<16} " + ", ".join(f"{k} {s}" for k, s in man.environment))
        lines += [("text", ""), ("h2", "Artifacts (sha256)")]
        lines += [("mono", f"{h}  {k}") for k, h in man.artifacts]
    else:
        lines.append(("text", "manifest.json: not available."))
    lines += [("text", ""), ("h2", "Reproduce")]
    lines += _wrap("mono", view.reproduce or "no reproduce command recorded")
    return lines


def _comparison_lines(cmp: ComparisonView) -> list[Line]:
    rows = [("run", "trainer / mode", "claimed ε", "max ε_LB", "best AUC", "TPR@0.1%", "verdict")]
    for r in cmp.rows:
        rows.append((r.label, r.trainer_mode, fmt_eps(r.claimed_epsilon), fmt_eps(r.epsilon_lb_max),
                     fmt_num(r.best_auc, ".3f"), fmt_num(r.tpr_at_0_1, ".3f"), r.status.upper()))
    lines: list[Line] = [("h1", f"Privacy audit: comparison of {len(cmp.rows)} runs"), ("text", "")]
    lines += _table(rows)
    lines += [("text", ""), ("h2", "Verdicts")]
    for r in cmp.rows:
        lines += _wrap("text", f"{r.label}: {r.verdict_line}")
    return lines


_SIZES = {"h1": (14, "bold", 2.0), "h2": (11, "bold", 1.6), "text": (8.5, "normal", 1.25), "mono": (7.5, "normal", 1.25)}


def _paginate(lines: list[Line]) -> list[list[Line]]:
    pages, page, used = [], [], 0.0
    for ln in lines:
        h = _SIZES[ln[0]][2]
        if used + h > LINES_PER_PAGE * 1.25 and page:
            pages.append(page)
            page, used = [], 0.0
        page.append(ln)
        used += h
    if page:
        pages.append(page)
    return pages


def _text_page(lines: list[Line]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4_IN)
    y = 1 - 0.6 / A4_IN[1]
    step = 1.0 / (A4_IN[1] * 72 / 8.5 / 1.02)  # one text line at 8.5 pt, in figure fractions
    for style, text in lines:
        size, weight, h = _SIZES[style]
        family = "DejaVu Sans Mono" if style == "mono" else "DejaVu Sans"
        fig.text(0.6 / A4_IN[0], y, text, fontsize=size, fontweight=weight, family=family, va="top", ha="left")
        y -= step * h
    return fig


def _figure_page(spec, *, dpi: int = 150):
    """One A4 page: the figure's title, the figure as a PNG (figures.to_png, so the shared Figure
    object is never modified) scaled to the text width, and its caption."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    from dp_audit.reports.figures import to_png

    img = imread(io.BytesIO(to_png(spec.figure, dpi=dpi)), format="png")
    page = Figure(figsize=A4_IN)
    left, width = 0.6 / A4_IN[0], 1 - 1.2 / A4_IN[0]
    height = width * A4_IN[0] / A4_IN[1] * img.shape[0] / img.shape[1]
    top = 1 - 1.0 / A4_IN[1]
    page.text(left, 1 - 0.6 / A4_IN[1], spec.title, fontsize=12, fontweight="bold", va="top")
    ax = page.add_axes((left, top - height, width, height))
    ax.imshow(img, interpolation="lanczos")
    ax.set_axis_off()
    caption = "\n".join(textwrap.wrap(spec.caption, 110))
    page.text(left, top - height - 0.15 / A4_IN[1], caption, fontsize=8.5, va="top", color="#444444")
    return page


def _fallback(first: list[Line], specs, last: list[Line]) -> bytes:
    from matplotlib import rc_context
    from matplotlib.backends.backend_pdf import PdfPages

    from dp_audit.reports.figures import STYLE

    buf = io.BytesIO()
    # Type 42 (TrueType) fonts keep the text extractable and searchable
    with rc_context({**STYLE, "pdf.fonttype": 42}):
        with PdfPages(buf, metadata={"Creator": "dp-audit", "Producer": "dp-audit (matplotlib)",
                                     "CreationDate": None}) as pdf:
            for page in _paginate(first):
                pdf.savefig(_text_page(page))
            for s in specs:
                pdf.savefig(_figure_page(s))
            for page in _paginate(last) if last else []:
                pdf.savefig(_text_page(page))
    return buf.getvalue()


__all__ = ["render_pdf", "render_comparison_pdf", "weasyprint_available", "ENGINES"]
