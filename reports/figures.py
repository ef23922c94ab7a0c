"""Report figures with matplotlib's object API (``matplotlib.figure.Figure`` with the Agg canvas):
no pyplot, so nothing global is switched for other users of matplotlib in the same process.

Colour-blind-safe Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"); every axis is
labelled with its unit. Figures are returned as inline SVG strings (HTML) or PNG bytes, and the
PDF fallback saves the :class:`~matplotlib.figure.Figure` objects directly.

Each figure is drawn from the view model only: no statistic is recomputed (histogram binning is
the one presentational computation).
"""

from __future__ import annotations

import io
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dp_audit.reports.viewmodel import STANDARD_FPRS, AttackView, CurveView, ReportView, fmt_eps, fmt_pct

# Okabe-Ito: black, orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
SERIES = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")  # no yellow for lines
MEMBER, NONMEMBER = "#D55E00", "#0072B2"
WIDTH_IN = 7.0

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "svg.fonttype": "none",  # real <text>: smaller, selectable, searchable in HTML and PDF
    "figure.dpi": 100,
}


@dataclass(frozen=True)
class FigureSpec:
    """A drawn figure with its anchor key, heading and caption."""

    key: str
    title: str
    caption: str
    figure: Figure


@contextmanager
def _style(salt: str = "dp-audit") -> Iterator[None]:
    # svg.hashsalt: deterministic SVG ids, distinct per figure so inline SVGs never share an id.
    with rc_context({**STYLE, "svg.hashsalt": salt}):
        yield


def _new(height: float, *, salt: str) -> Figure:
    with _style(salt):
        fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# serialisation


def to_svg(fig: Figure, *, salt: str = "dp-audit") -> str:
    """Inline SVG (no XML prolog), deterministic for a given figure and salt."""
    buf = io.StringIO()
    with _style(salt):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # make it scale with its container: keep the viewBox, let CSS size it
    text = re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', r'<svg\1', text, count=1)
    # matplotlib names its groups axes_1, line2d_1, ...: prefix every id (and every reference to
    # one) so several SVGs inline in one HTML page never share an id
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", salt)
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", text)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', text)


def to_png(fig: Figure, *, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    with _style():
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# ROC


def _log_roc(fpr: Sequence[float], tpr: Sequence[float], lo: float) -> tuple[np.ndarray, np.ndarray]:
    """The recorded ROC for log axes: points at FPR = 0 move to the axis' left edge ``lo`` (below
    1/n non-members the empirical TPR is the one at FPR = 0), points at TPR = 0 are dropped."""
    x, y = np.asarray(fpr, float), np.asarray(tpr, float)
    x = np.where(x > 0, np.maximum(x, lo), lo)
    keep = y > 0
    return x[keep], y[keep]


def roc_figure(curves: Sequence[tuple[str, AttackView]], *, salt: str = "roc") -> Figure:
    """ROC on log-log axes, one curve per (label, attack), markers at 0.1% and 1% FPR, chance line."""
    fig = _new(4.2, salt=salt)
    with _style(salt):
        ax = fig.add_subplot()
        n_non = [a.n_nonmembers for _, a in curves if a.n_nonmembers] or [1000]
        lo_x = min(STANDARD_FPRS[0], 1.0 / max(n_non)) / 2
        pos = [t for _, a in curves for t in a.roc_tpr if t > 0] + [t for _, a in curves for _, t in a.tpr_at_fpr if t > 0]
        lo_y = min(min(pos) / 2, 0.1) if pos else lo_x
        ax.plot([lo_x, 1], [lo_x, 1], color="#777777", linestyle="--", linewidth=1, label="chance (TPR = FPR)")
        for f in STANDARD_FPRS:
            ax.axvline(f, color="#999999", linestyle=":", linewidth=0.9)
            ax.annotate(f"{fmt_pct(f)} FPR", (f, lo_y), xytext=(3, 4), textcoords="offset points",
                        fontsize=7.5, color="#555555")
        markers = {STANDARD_FPRS[0]: "o", STANDARD_FPRS[1]: "s"}
        for i, (label, a) in enumerate(curves):
            color = SERIES[i % len(SERIES)]
            x, y = _log_roc(a.roc_fpr, a.roc_tpr, lo_x)
            if x.size:
                ax.plot(x, y, color=color, linewidth=1.6, label=f"{label} (AUC {a.auc:.3f})")
            for f, mk in markers.items():
                t = a.tpr_at(f)
                if t is not None and t > 0:
                    ax.plot([f], [t], marker=mk, color=color, markersize=6.5, markeredgecolor="white",
                            linestyle="none", zorder=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo_x, 1.0)
        ax.set_ylim(lo_y, 1.1)
        ax.set_xlabel("false positive rate (fraction of non-member canaries flagged, log scale)")
        ax.set_ylabel("true positive rate\n(fraction of member canaries found, log scale)")
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="o", color="#444444", linestyle="none", label="TPR at 0.1% FPR"),
                    Line2D([], [], marker="s", color="#444444", linestyle="none", label="TPR at 1% FPR")]
        ax.legend(handles=handles, loc="lower right", frameon=True, framealpha=0.9)
    return fig


# ---------------------------------------------------------------------------------------------
# score histograms


def histogram_figure(attacks: Sequence[AttackView], *, salt: str = "hist") -> Figure:
    n = len(attacks)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = _new(2.6 * rows + 0.3, salt=salt)
    with _style(salt):
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, a in zip(axes, attacks):
            ax.set_title(f"attack: {a.name}", loc="left")
            ax.set_xlabel("attack score (higher = more likely member)")
            ax.set_ylabel("canaries (count)")
            if a.member_scores is None or a.nonmember_scores is None:
                ax.text(0.5, 0.5, "scores file not available", ha="center", va="center", transform=ax.transAxes)
                continue
            mem, non = np.asarray(a.member_scores), np.asarray(a.nonmember_scores)
            edges = np.histogram_bin_edges(np.concatenate([mem, non]), bins=30)
            ax.hist(non, bins=edges, color=NONMEMBER, alpha=0.45)
            ax.hist(non, bins=edges, histtype="step", color=NONMEMBER, linewidth=1.2)
            ax.hist(mem, bins=edges, color=MEMBER, alpha=0.45, hatch="//")
            ax.hist(mem, bins=edges, histtype="step", color=MEMBER, linewidth=1.2)
            ax.set_title(f"{mem.size} members, {non.size} non-members", loc="right", fontsize=8, color="#555555")
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.legend(handles=[Patch(facecolor=NONMEMBER, alpha=0.6, edgecolor=NONMEMBER, label="non-member canaries"),
                            Patch(facecolor=MEMBER, alpha=0.6, edgecolor=MEMBER, hatch="//", label="member canaries")],
                   loc="outside upper center", ncols=2, frameon=False)
    return fig


def step_scores_figure(d0: Sequence[float], d1: Sequence[float], *, thresholds: Sequence[tuple[str, float, int]] = (),
                       statistic: str = "statistic of the release", salt: str = "step-hist") -> Figure:
    """Histograms of a step audit's scores: trials on d0 (without the canary) against trials on d1
    (with it), and each estimator's chosen rule (vertical line at its threshold, the side it calls
    d1 in its label). Binning is the only computation."""
    d0, d1 = np.asarray(d0, dtype=float), np.asarray(d1, dtype=float)
    fig = _new(3.0, salt=salt)
    with _style(salt):
        ax = fig.add_subplot()
        both = np.concatenate([d0, d1])
        lo, hi = np.quantile(both, [0.0005, 0.9995]) if both.size else (0.0, 1.0)
        edges = np.histogram_bin_edges(np.clip(both, lo, hi), bins=60) if hi > lo else 30
        ax.hist(np.clip(d0, lo, hi), bins=edges, color=NONMEMBER, alpha=0.45, label=f"d0: D ({d0.size} trials)")
        ax.hist(np.clip(d1, lo, hi), bins=edges, color=MEMBER, alpha=0.45, hatch="//",
                label=f"d1: D' = D + canary ({d1.size} trials)")
        for i, (name, t, orientation) in enumerate(thresholds):
            ax.axvline(t, color=SERIES[(i + 2) % len(SERIES)], linestyle="--", linewidth=1.2,
                       label=f"{name} rule: d1 iff score {'≥' if orientation >= 0 else '≤'} {t:.3g}")
        ax.set_xlabel(f"score: {statistic}", parse_math=False)  # user text: drawn literally
        ax.set_ylabel("trials (count)")
        ax.legend(loc="upper left", frameon=True, framealpha=0.9, fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------
# ε lower bounds against the claim and the ceiling


def epsilon_figure(view: ReportView, *, salt: str = "eps") -> Figure:
    ests = list(view.estimates)
    fig = _new(1.3 + 0.32 * len(ests), salt=salt)
    claimed = view.claimed_epsilon
    with _style(salt):
        ax = fig.add_subplot()
        labels = [f"{e.display} on {e.attack or '-'}" + ("" if e.is_bound else " (estimate)") for e in ests]
        y = np.arange(len(ests))[::-1]
        finite = [e.epsilon_lb for e in ests if math.isfinite(e.epsilon_lb)]
        finite += [e.ceiling for e in ests if e.ceiling is not None and math.isfinite(e.ceiling)]
        if math.isfinite(claimed):
            finite.append(claimed)
        top = max(finite + [1.0]) * 1.12
        for yi, e in zip(y, ests):
            if e.ceiling is not None and math.isfinite(e.ceiling):
                ax.barh(yi, e.ceiling, height=0.55, color="#e4e4e4", edgecolor="#bbbbbb", linewidth=0.6, zorder=1)
            val = min(e.epsilon_lb, top) if math.isfinite(e.epsilon_lb) else top
            color = MEMBER if e.exceeds_claim else "#0072B2"
            if e.is_bound:
                ax.plot([val], [yi], "o", color=color, markersize=7, zorder=3)
            else:
                ax.plot([val], [yi], "D", markerfacecolor="white", markeredgecolor="#555555", markersize=6, zorder=3)
            ax.annotate(fmt_eps(e.epsilon_lb, 2), (val, yi), xytext=(6, -3), textcoords="offset points", fontsize=7.5)
        if math.isfinite(claimed):
            ax.axvline(claimed, color="#000000", linestyle="--", linewidth=1.2, zorder=2)
        ax.set_yticks(y, labels)
        ax.set_xlim(0, top)
        ax.set_ylim(-0.7, len(ests) - 0.3)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("ε (privacy loss, dimensionless; δ = %g)" % view.delta)
        handles = [
            Line2D([], [], marker="o", color="#0072B2", linestyle="none", label="ε_LB ≤ claim (lower bound, 1−α)"),
            Line2D([], [], marker="o", color=MEMBER, linestyle="none", label="ε_LB > claim: refutes it"),
            Line2D([], [], marker="D", markerfacecolor="white", markeredgecolor="#555555", linestyle="none",
                   label="point estimate, not a bound"),
            Patch(facecolor="#e4e4e4", edgecolor="#bbbbbb", label="ceiling: a perfect attack with these canaries"),
            Line2D([], [], color="#000000", linestyle="--",
                   label=f"claimed ε = {fmt_eps(claimed, 2)}" if math.isfinite(claimed) else "claimed ε = ∞ (no line)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# landscapes


SPLIT_COLORS = {"train": "#D55E00", "member": "#CC79A7", "nonmember": "#0072B2", "dev": "#009E73"}
SPLIT_STYLES = {"train": "-", "member": "-.", "nonmember": "--", "dev": ":"}
_ETA_AXIS = {"gaussian": "η (loss at w + η·d, d ~ N(0, I))",
             "filter": "η (w + η·d, d filter-normalised)"}


def _panels(curves: Sequence[tuple[str, CurveView]]) -> list[tuple[str, list[int]]]:
    """Curves grouped by probe label, in first-seen order (each panel has one η axis)."""
    out: dict[str, list[int]] = {}
    for i, (_, c) in enumerate(curves):
        out.setdefault(c.panel, []).append(i)
    return list(out.items())


def landscape_figure(curves: Sequence[tuple[str, CurveView]], *, salt: str = "land",
                     colors: Sequence[str] | None = None, styles: Sequence[str] | None = None) -> Figure:
    """Loss at w + η·d against η, with ±1 standard error bands; one panel per probe (Gaussian and
    filter-normalised η are not on the same scale). Default colours: one per split."""
    panels = _panels(curves)
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    n_labels = len({label for label, _ in curves})
    widest = max((len(label) for label, _ in curves), default=1)
    fig = _new(3.0 * rows + 0.6 + 0.2 * math.ceil(n_labels / max(1, min(4, 96 // (widest + 8)))), salt=salt)
    with _style(salt):
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, (panel, idx) in zip(axes, panels):
            kind = curves[idx[0]][1].probe
            for i in idx:
                label, c = curves[i]
                color = colors[i] if colors else SPLIT_COLORS.get(c.split, SERIES[i % len(SERIES)])
                ls = styles[i] if styles else "-"
                eta, loss = np.asarray(c.eta), np.asarray(c.loss_mean)
                ax.plot(eta, loss, color=color, linestyle=ls, marker=".", linewidth=1.5, label=label)
                if c.loss_se is not None:
                    se = np.nan_to_num(np.asarray(c.loss_se), nan=0.0)
                    ax.fill_between(eta, loss - se, loss + se, color=color, alpha=0.18, linewidth=0)
            k = curves[idx[0]][1].n_directions
            ax.set_title(f"{panel}" + (f" ({k} directions)" if k else ""), loc="left")
            ax.set_xlabel(_ETA_AXIS.get(kind, "η (perturbation size)"))
            ax.set_ylabel("mean loss (cross-entropy, nats)")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        handles: dict[str, Line2D] = {}
        for ax in axes[:len(panels)]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        # as many columns as the figure's width holds (~96 characters at legend size 8)
        widest = max((len(lab) for lab in handles), default=1)
        ncols = max(1, min(4, len(handles), 96 // (widest + 8)))
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=ncols, frameon=False, title="band: ±1 SE", title_fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# figure sets


def report_figures(view: ReportView) -> list[FigureSpec]:
    """The figures of one run's report, in display order; sections without data draw nothing."""
    out: list[FigureSpec] = []
    if view.attacks:
        out.append(FigureSpec("roc", "ROC curves (log-log)",
                              "Membership inference on the canaries. Markers: TPR at 0.1% and 1% FPR. "
                              "Dashed: chance.", roc_figure([(a.name, a) for a in view.attacks])))
        if view.has_histograms:
            out.append(FigureSpec("histograms", "Score histograms",
                                  "Attack scores of member (inserted) and non-member canaries.",
                                  histogram_figure(view.attacks)))
    if view.estimates:
        out.append(FigureSpec("epsilon", "ε lower bounds against the claim",
                              "Each estimator on each attack's scores. Grey bar: the largest ε_LB this audit could "
                              "show (every guess right); dashed line: the claim.", epsilon_figure(view)))
    if view.landscapes and view.landscapes.curves:
        out.append(FigureSpec("landscape", "Loss landscape",
                              "Loss along random directions (one panel per probe), mean over directions "
                              "±1 SE (the SE includes the subsampling of examples); colour: data split.",
                              landscape_figure([(c.split, c) for c in view.landscapes.curves])))
    return out


def comparison_figures(labelled: Sequence[tuple[str, ReportView]]) -> list[FigureSpec]:
    """Overlaid ROC (each run's best attack by AUC) and landscape curves across runs."""
    out: list[FigureSpec] = []
    rocs = [(f"{label}: {v.best_attack.name}", v.best_attack) for label, v in labelled if v.best_attack]
    if rocs:
        out.append(FigureSpec("roc", "ROC curves, best attack of each run (log-log)",
                              "Markers: TPR at 0.1% and 1% FPR. Dashed: chance.", roc_figure(rocs, salt="cmp-roc")))
    curves, colors, styles = [], [], []
    dashes = ("-", "--", ":", "-.")
    for i, (label, v) in enumerate(labelled):
        if not v.landscapes:
            continue
        splits = list(dict.fromkeys(c.split for c in v.landscapes.curves))
        for c in v.landscapes.curves:
            curves.append((f"{label}: {c.split}", c))
            colors.append(SERIES[i % len(SERIES)])
            styles.append(SPLIT_STYLES.get(c.split, dashes[splits.index(c.split) % len(dashes)]))
    if curves:
        out.append(FigureSpec("landscape", "Loss landscapes",
                              "Colour: run; line style: split. Bands: ±1 SE.",
                              landscape_figure(curves, salt="cmp-land", colors=colors, styles=styles)))
    return out


__all__ = ["FigureSpec", "OKABE_ITO", "roc_figure", "histogram_figure", "epsilon_figure", "landscape_figure",
           "report_figures", "comparison_figures", "to_svg", "to_png"]
