"""The report of one step-level audit (``dp-audit report STEP_AUDIT_DIR [--pdf]``): report.html
(Jinja2, autoescaped, the score histogram inline as SVG) and report.pdf (WeasyPrint, or the
matplotlib fallback of :mod:`dp_audit.reports.pdf`).

Everything comes from the step-audit directory, read through
:func:`dp_audit.stepaudit.output.read_step_audit`: every hash is verified and every bound
recomputed from trials.npz, so a tampered directory is an IntegrityError (exit 3), never a report.
Text from the directory (construction name, description, facts, run id) is escaped by the
template (HTML) or folded to one printable line (:func:`dp_audit.safetext.one_line`; PDF).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_audit.safetext import one_line

HTML, PDF = "report.html", "report.pdf"
ANY_MECHANISM = "valid for any mechanism"


@dataclass(frozen=True)
class EstimateRow:
    method: str
    epsilon_lb: float
    alpha: float  # this estimator's share of α
    validity: str  # ANY_MECHANISM, or e.g. "valid only under a μ-GDP claim"
    counted: bool
    refutes: bool
    rule: str  # the threshold rule and how it was chosen
    fpr_ub: float | None
    fnr_ub: float | None
    mu_lb: float | None


@dataclass(frozen=True)
class StepAuditView:
    path: str
    construction: str
    description: str
    facts: tuple[tuple[str, str], ...]
    claim_epsilon: float
    delta: float
    claim_mu: float | None
    sigma: float | None
    steps: int  # consecutive steps per trial (k); k > 1: the claim is the composition of k per-step claims
    trials: int  # per side
    calibration: int  # per side
    alpha: float
    threshold: str
    seed: int
    estimates: tuple[EstimateRow, ...]
    eps_lb: float
    refuted: bool
    summary: str  # the one-line result (stepaudit.result.summary_line)
    scores_d0: Any
    scores_d1: Any
    rules: tuple[tuple[str, float, int], ...]  # (estimator, threshold position on the score axis, direction)
    statistic: str
    run_id: str
    created: str
    tool_version: str
    environment: tuple[tuple[str, str], ...]
    artifacts: tuple[tuple[str, str], ...]  # (file, sha256)
    per_step: str = ""  # k > 1: the per-step claim and how it composes (e.g. "ε 4.377, μ 1 (gdp)")

    @property
    def claim_name(self) -> str:
        """What the claim is a claim of: one step, or k composed steps (never the composed ε
        called "per-step")."""
        return "per-step claim" if self.steps == 1 else f"claim of {self.steps} composed steps"

    @property
    def verdict_label(self) -> str:
        return "REFUTED" if self.refuted else "NOT REFUTED"

    @property
    def verdict_text(self) -> str:
        if self.refuted:
            return (f"The {self.claim_name} ε = {self.claim_epsilon:.3f} (δ = {self.delta:g}) is refuted with "
                    f"{100 * (1 - self.alpha):g}% confidence: ε_LB = {self.eps_lb:.3f} exceeds it.")
        return (f"The {self.claim_name} ε = {self.claim_epsilon:.3f} (δ = {self.delta:g}) is not refuted: the largest "
                f"counted ε_LB is {self.eps_lb:.3f} at {100 * (1 - self.alpha):g}% confidence. A lower bound can "
                f"refute a claim, never prove it.")


def _rule_text(e, threshold: str) -> str:
    d = e.details or {}
    if threshold == "calibration" and "threshold_value" in d:
        side = "≥" if d.get("orientation", 1) >= 0 else "≤"
        t = d["threshold_value"] if d.get("orientation", 1) >= 0 else -d["threshold_value"]
        return (f"d1 iff score {side} {t:.4g}, chosen on the first {d.get('calibration_trials_per_side')} trials per "
                f"side (calibration split), tested on the rest")
    return f"{threshold}: {d.get('rule', 'threshold family over the order statistics, Bonferroni-corrected')}"


def build_step_view(path: str | Path) -> StepAuditView:
    """Read and verify a step-audit directory (IntegrityError on any mismatch) into a view."""
    from dp_audit.manifest import load_manifest
    from dp_audit.stepaudit.output import read_step_audit
    from dp_audit.stepaudit.result import summary_line

    path = Path(path)
    res = read_step_audit(path)
    man = load_manifest(path)
    rows, rules = [], []
    for e in res.estimates:
        d = e.details or {}
        counts = e.counts or {}
        rows.append(EstimateRow(method=e.method, epsilon_lb=float(e.epsilon_lb), alpha=float(e.alpha),
                                validity=str(d.get("validity") or ANY_MECHANISM), counted=bool(d.get("counted")),
                                refutes=bool(d.get("refutes")), rule=_rule_text(e, res.threshold),
                                fpr_ub=counts.get("fpr_ub"), fnr_ub=counts.get("fnr_ub"), mu_lb=d.get("mu_lb")))
        if "threshold_value" in d:
            o = 1 if d.get("orientation", 1) >= 0 else -1
            rules.append((e.method, float(d["threshold_value"]) * o, o))
    info = dict(res.info or {})
    facts = tuple((str(k), one_line(v, limit=300)) for k, v in sorted(info.items()))
    steps = int(res.steps)  # as read_step_audit checked it against the manifest (not the construction's info)
    comp = res.composition or {}
    per = comp.get("per_step") or {}
    per_step = "" if steps == 1 else (
        f"ε {float(per.get('epsilon', float('nan'))):.4g}"
        + (f", μ {float(per['mu']):.4g}" if per.get("mu") is not None else "")
        + (f", Laplace ε0 {float(per['laplace_epsilon']):.4g}" if per.get("laplace_epsilon") is not None else "")
        + f"; composed over {steps} steps by {comp.get('accountant')}")
    env = man.get("environment") or {}
    arts = man.get("artifacts") or {}
    return StepAuditView(
        path=str(path), construction=res.construction, description=res.description, facts=facts,
        claim_epsilon=float(res.claim_epsilon), delta=float(res.delta), claim_mu=res.claim_mu,
        sigma=float(info["sigma"]) if isinstance(info.get("sigma"), (int, float)) else None, steps=steps,
        trials=int(res.trials), calibration=int(res.calibration_trials), alpha=float(res.alpha),
        threshold=res.threshold, seed=int(res.seed), estimates=tuple(rows), eps_lb=float(res.eps_lb),
        refuted=bool(res.refuted), summary=summary_line(res), scores_d0=res.scores_d0, scores_d1=res.scores_d1,
        rules=tuple(rules), statistic=str(info.get("statistic") or "statistic of the release"),
        run_id=str(man.get("run_id", "")), created=str(man.get("created", "")),
        tool_version=str(man.get("tool_version", "")),
        environment=tuple((str(k), str(v)) for k, v in sorted(env.items())), per_step=per_step,
        artifacts=tuple((str(k), str(v.get("sha256") if isinstance(v, dict) else v)) for k, v in sorted(arts.items())))


def step_figures(view: StepAuditView) -> list:
    from dp_audit.reports.figures import FigureSpec, step_scores_figure

    fig = step_scores_figure(view.scores_d0, view.scores_d1, thresholds=view.rules, statistic=view.statistic)
    caption = (f"Scores of the {view.trials} trials per side: the step run on D (d0) and on D' = D ∪ {{canary}} (d1). "
               f"Dashed: each estimator's rule, chosen before the test trials were looked at. Scores outside the 0.05%–99.95% "
               f"range are drawn in the outermost bins.")
    return [FigureSpec("scores", "Score histograms, d0 vs d1", caption, fig)]


def render_step_html(view: StepAuditView, *, specs=None) -> str:
    from dp_audit import __version__
    from dp_audit.reports.html import embed, environment

    figs = embed(step_figures(view) if specs is None else specs)
    return environment().get_template("step_audit.html.j2").render(view=view, figures=figs,
                                                                   tool_version=__version__)


def _pdf_lines(view: StepAuditView):
    from dp_audit.reports.pdf import _table, _wrap

    lines = [("h1", one_line(f"Step-level audit: {view.construction}", limit=90))]
    lines += _wrap("text", one_line(view.description))
    lines += [("text", ""), ("h2", f"Verdict: {view.verdict_label}")]
    lines += _wrap("text", view.verdict_text)
    lines += _wrap("mono", one_line(view.summary))
    lines += [("text", ""), ("h2", "Claim and trials")]
    claim = [(f"{view.claim_name} ε", f"{view.claim_epsilon:.4f}"),
             *([("per-step claim", view.per_step)] if view.per_step else []), ("δ", f"{view.delta:g}"),
             ("μ (GDP claim)", "-" if view.claim_mu is None else f"{view.claim_mu:.4g}"),
             ("σ", "-" if view.sigma is None else f"{view.sigma:.4g}"), ("steps", str(view.steps)),
             ("N per side", str(view.trials)), ("calibration per side", str(view.calibration)),
             ("α", f"{view.alpha:g}"), ("threshold", view.threshold), ("seed", str(view.seed))]
    lines += _table([("quantity", "value"), *claim])
    lines += [("text", ""), ("h2", "ε lower bounds per estimator")]
    rows = [("estimator", "ε_LB", "α share", "validity", "counted", "vs claim")]
    for e in view.estimates:
        rows.append((e.method, f"{e.epsilon_lb:.3f}", f"{e.alpha:.3g}", e.validity, "yes" if e.counted else "no",
                     "EXCEEDS" if e.refutes else "below"))
    lines += _table(rows)
    for e in view.estimates:
        lines += _wrap("text", one_line(f"{e.method}: {e.rule}"))
    tail = [("h2", "Construction facts")]
    tail += [("mono", one_line(f"{k}: {v}", limit=140)) for k, v in view.facts]
    tail += [("text", ""), ("h2", "Manifest")]
    tail += [("mono", one_line(f"run id {view.run_id}; created {view.created}; dp-audit {view.tool_version}"))]
    tail += [("mono", f"{h}  {one_line(k)}") for k, h in view.artifacts]
    tail += _wrap("mono", one_line("environment: " + ", ".join(f"{k} {v}" for k, v in view.environment)))
    return lines, tail


def render_step_pdf(view: StepAuditView, *, engine: str = "auto", specs=None) -> bytes:
    from dp_audit.reports.pdf import _engine, _fallback, _weasy

    specs = step_figures(view) if specs is None else list(specs)
    if _engine(engine) == "weasyprint":
        return _weasy(render_step_html(view, specs=specs))
    first, last = _pdf_lines(view)
    return _fallback(first, specs, last)


def render_step_audit(path: str | Path, *, pdf: bool = False, out_dir: str | Path | None = None,
                      pdf_engine: str = "auto") -> dict[str, Path]:
    """Verify the step-audit directory ``path`` and write report.html (and report.pdf) into
    ``out_dir`` (default: ``path``), atomically. Returns ``{format: path}``."""
    from dp_audit.io import atomic_write_bytes, atomic_write_text

    view = build_step_view(path)
    out = Path(out_dir) if out_dir is not None else Path(path)
    out.mkdir(parents=True, exist_ok=True)
    specs = step_figures(view)
    written = {"html": atomic_write_text(out / HTML, render_step_html(view, specs=specs))}
    if pdf:
        written["pdf"] = atomic_write_bytes(out / PDF, render_step_pdf(view, engine=pdf_engine, specs=specs))
    return written


def is_step_audit_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a step audit (its manifest.json says kind "step-audit")."""
    import json

    try:
        return json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8")).get("kind") == "step-audit"
    except (OSError, ValueError, AttributeError):
        return False


__all__ = ["StepAuditView", "build_step_view", "is_step_audit_dir", "render_step_audit", "render_step_html",
           "render_step_pdf"]
