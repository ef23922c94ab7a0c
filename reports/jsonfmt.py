"""``report.json``: a copy of audit.json (validated by building the view model first) with the
verdict as shown in the report. Deterministic: no time stamp is added."""

from __future__ import annotations

from dataclasses import asdict

from dp_audit import __version__
from dp_audit.io import dumps_json
from dp_audit.reports.viewmodel import ComparisonView, ReportView


def render_json(view: ReportView) -> str:
    audit = view.audit()
    v = view.verdict
    audit["report"] = {
        "rendered_by": f"dp-audit {__version__}",
        "status": v.status,  # "pass" | "fail" | "not gated"
        "verdict_line": v.line,
        "epsilon_lb_max": v.epsilon_lb_max,
        "unaccounted": [asdict(u) for u in view.unaccounted],
        "sections_not_run": [name for name, present in (
            ("attacks", bool(view.attacks)), ("estimates", bool(view.estimates)),
            ("accounting", view.accounting is not None), ("landscapes", view.landscapes is not None),
            ("manifest", view.manifest is not None)) if not present],
    }
    return dumps_json(audit)


def render_comparison_json(cmp: ComparisonView) -> str:
    return dumps_json({"rendered_by": f"dp-audit {__version__}", "runs": [asdict(r) for r in cmp.rows]})


__all__ = ["render_json", "render_comparison_json"]
