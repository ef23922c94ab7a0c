"""The study's outputs: ``study.json`` (every row), ``study.md`` (tables + conclusion),
``study.html`` (the same, a small Jinja2 template with autoescape), and the comparison report of
the arms' run directories (``comparison/report.html``, :func:`dp_audit.reports.render_comparison`).
Every file is written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from dp_audit.io import atomic_write_json, atomic_write_text
from dp_audit.study.conclusion import SWEEP_NAMES, conclusion

COLUMNS = ("arm", "claimed ε", "step construction(s)", "per-step claim ε", "step-level ε_LB (95%)",
           "black-box one-run ε_LB", "white-box one-run ε_LB", "best MIA AUC", "TPR@1%FPR", "test accuracy")
SWEEP_COLUMNS = ("construction", "option", "value", "α (point)", "per-step claim ε", "step-level ε_LB (sweep 95%)",
                 "refuted")


SWEEP_NOTE = ("The sweep's points are one family: each runs at α/K (Bonferroni over its K points), so all K bounds "
              "hold together with 95% confidence; each point has its own seed (study.json).")


def _f(x: Any, refuted: bool | None = None) -> str:
    if x is None:
        return "-"
    text = f"{x:.2f}" if isinstance(x, float) else str(x)
    return f"**{text}** (refuted)" if refuted else text


def table_rows(arms) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per arm ("-" where a number does not exist)."""
    return [(r.label, _f(r.claimed_epsilon), ", ".join(r.step_constructions) or "-", _f(r.step_claim_epsilon),
             _f(r.step_eps_lb, r.step_refuted), _f(r.blackbox_eps_lb, r.blackbox_refuted),
             _f(r.whitebox_eps_lb, r.whitebox_eps_lb is not None and r.claimed_epsilon is not None
                and r.whitebox_eps_lb > r.claimed_epsilon),
             _f(r.mia_auc), _f(r.mia_tpr_at_1pct_fpr), _f(r.test_accuracy)) for r in arms]


def sweep_rows(sweeps) -> list[tuple[str, ...]]:
    return [(s.construction, s.option, f"{s.value:g}", "-" if s.alpha is None else f"{s.alpha:.4g}",
             _f(s.step_claim_epsilon), _f(s.step_eps_lb),
             "yes" if s.step_refuted else "no") for s in sorted(sweeps, key=lambda s: (s.sweep, s.value))]


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(result, *, settings: Mapping[str, Any], familywise=None) -> str:
    sweeps_by = {}
    for s in result.sweeps:
        sweeps_by.setdefault(s.sweep, []).append(s)
    parts = [f"# Study awp-leak\n\nSettings: {', '.join(f'{k} {v}' for k, v in settings.items())}. "
             "ε_LB are 95% lower bounds; **bold** = the claim is refuted at that threat model (step level: against "
             "the per-step claim; end to end: against the run's claimed ε). \"-\": no such number.\n",
             "## Arms\n", _md_table(COLUMNS, table_rows(result.arms)) + "\n"]
    for name, rows in sweeps_by.items():
        parts += [f"## Sweep: {SWEEP_NAMES.get(name, name)}\n", SWEEP_NOTE + "\n",
                  _md_table(SWEEP_COLUMNS, sweep_rows(rows)) + "\n"]
    lines = conclusion(result.arms, result.sweeps, alpha=settings.get("alpha"), familywise=familywise)
    parts += ["## Conclusion\n", "\n".join(f"- {line}" for line in lines) + "\n"]
    return "\n".join(parts)


def render_html(result, *, settings: Mapping[str, Any], familywise=None) -> str:
    from dp_audit import __version__
    from dp_audit.reports.html import environment

    return environment().get_template("study.html.j2").render(
        settings=dict(settings), columns=COLUMNS, rows=table_rows(result.arms), sweep_columns=SWEEP_COLUMNS, sweep_note=SWEEP_NOTE,
        sweeps=[(SWEEP_NAMES.get(k, k), sweep_rows([s for s in result.sweeps if s.sweep == k]))
                for k in dict.fromkeys(s.sweep for s in result.sweeps)],
        conclusion=conclusion(result.arms, result.sweeps, alpha=settings.get("alpha"), familywise=familywise),
        tool_version=__version__)


def study_json(result, *, settings: Mapping[str, Any], elapsed_s: float, familywise=None) -> dict[str, Any]:
    return {"kind": "dp-audit-study", "study": "awp-leak", "settings": dict(settings),
            "arms": [r.to_dict() for r in result.arms], "sweeps": [s.to_dict() for s in result.sweeps],
            "conclusion": conclusion(result.arms, result.sweeps, alpha=settings.get("alpha"), familywise=familywise),
            "familywise": familywise.to_dict() if familywise is not None else None,
            "timings": {"this_invocation_s": round(elapsed_s, 1)}}


def write_outputs(result, *, settings: Mapping[str, Any], elapsed_s: float, log: Callable[[str], None] = print) -> None:
    from dp_audit.study.familywise import familywise_steps

    out: Path = result.out
    alpha = settings.get("alpha")
    fw = familywise_steps(out, result.arms, alpha=float(alpha)) if alpha is not None and len(result.arms) > 1 else None
    atomic_write_json(out / "study.json", study_json(result, settings=settings, elapsed_s=elapsed_s, familywise=fw))
    atomic_write_text(out / "study.md", render_markdown(result, settings=settings, familywise=fw))
    atomic_write_text(out / "study.html", render_html(result, settings=settings, familywise=fw))
    runs = [out / "arms" / r.name / "run" for r in result.arms if (out / "arms" / r.name / "run" / "audit.json").is_file()]
    if runs:
        from dp_audit.reports import render_comparison

        render_comparison(runs, out_dir=out / "comparison", formats=("html",))
    log(f"[study] wrote {out / 'study.json'}, {out / 'study.md'}, {out / 'study.html'}"
        + (f", {out / 'comparison' / 'report.html'}" if runs else ""))
    for line in conclusion(result.arms, result.sweeps, alpha=alpha, familywise=fw):
        log(f"[study] {line}")
