"""A short Markdown summary for a CI job summary (e.g. ``$GITHUB_STEP_SUMMARY``): the verdict,
a table of ε_LB per method, the top attack metrics and the unaccounted parts of training."""

from __future__ import annotations

from dp_audit.safetext import md_code, md_text
from dp_audit.reports.viewmodel import ComparisonView, ReportView, fmt_eps, fmt_num

ICONS = {"fail": "❌", "pass": "✅"}
TOP_ATTACKS = 5


def _cell(text: object) -> str:
    """Untrusted text for Markdown (and table cells): links, HTML, emphasis, pipes neutralised."""
    return md_text(text)


def render_markdown(view: ReportView) -> str:
    v = view.verdict
    lines = [f"## {ICONS.get(v.status, '⚪')} dp-audit: {v.label} — {_cell(view.model_name)}", "",
             _cell(v.line), "",
             f"Run {md_code(view.run_id)} · {_cell(view.trainer_mode)} · claimed ε {fmt_eps(view.claimed_epsilon)}, "
             f"δ = {view.delta:g} ({_cell(view.accountant)}) · threat model {view.threat_model}", ""]
    if view.unaccounted:
        lines += ["**Unaccounted parts of training** (not covered by the claimed ε):", ""]
        lines += [f"- **{_cell(u.component)}**" + (f": {_cell(u.reason)}" if u.reason else "") for u in view.unaccounted]
        lines.append("")
    else:
        lines += ["Unaccounted parts of training: none listed.", ""]
    if view.estimates:
        ceil = dict(view.ceiling)
        lines += ["| estimator | attack | ε_LB | α | kind | ceiling | vs claim |", "|---|---|---:|---:|---|---:|---|"]
        for e in view.estimates:
            vs = "not counted" if not e.is_bound else ("**exceeds**" if e.exceeds_claim else "below")
            lines.append(f"| {_cell(e.display)} | {_cell(e.attack or '-')} | {fmt_eps(e.epsilon_lb)} | {e.alpha:.3g} | "
                         f"{e.label} | {fmt_eps(ceil.get(e.method)) if e.is_bound else '-'} | {vs} |")
        lines.append("")
    else:
        lines += ["ε lower bounds: not run.", ""]
    if view.attacks:
        top = sorted(view.attacks, key=lambda a: -a.auc)[:TOP_ATTACKS]
        lines += ["| attack | AUC | TPR at 0.1% FPR | TPR at 1% FPR |", "|---|---:|---:|---:|"]
        lines += [f"| {_cell(a.name)} | {a.auc:.3f} | {fmt_num(a.tpr_at(0.001), '.3f')} | "
                  f"{fmt_num(a.tpr_at(0.01), '.3f')} |" for a in top]
        lines.append("")
    else:
        lines += ["Attacks: not run.", ""]
    if view.secrets is not None:
        lines += _secrets_lines(view)
    if view.accounting is not None:
        acc = view.accounting
        methods = ", ".join(f"{k} {fmt_eps(x)}" for k, x in acc.methods if x is not None)
        lines += [f"Accounting cross-check: {'consistent' if acc.consistent else '**not consistent**'} ({methods})."]
        lines += [f"- {_cell(f)}" for f in acc.flags]
        lines.append("")
    lines += ["A lower bound can refute a claim, never prove it. Full report: `report.html`."]
    return "\n".join(lines) + "\n"


TOP_SECRETS = 10


def _secrets_lines(view: ReportView) -> list[str]:
    sec = view.secrets
    lines = [f"**Secret canaries** (prefix {md_code(sec.prefix or '?')}, |R| = "
             f"{sec.space_size if sec.space_size is not None else 'unknown'}"
             + (f", {sec.n_candidates} candidates" if sec.n_candidates else "")
             + (f", greedy + {sec.samples} samples" if sec.samples is not None else "") + "):", ""]
    if sec.means or sec.extraction_totals:
        lines += ["| statistic | members | non-members |", "|---|---:|---:|"]
        lines += [f"| {_cell(k)} | {fmt_num(a, '.3f')} | {fmt_num(b, '.3f')} |" for k, a, b in sec.means]
        lines += [f"| extraction: {_cell(k)} | {a} | {b} |" for k, a, b in sec.extraction_totals]
        lines.append("")
    if sec.expected_unseen is not None:
        lines += [f"A secret never seen averages {sec.expected_unseen:.3f} bits of sampled exposure (≈ 1/ln 2); "
                  "the extrapolated exposure is an estimate, the ε bound uses the sampled ranks.", ""]
    if sec.extraction_note:
        lines += [_cell(sec.extraction_note), ""]
    if sec.bounds:
        lines += [f"Exposure / extraction bounds vs claimed ε {fmt_eps(view.claimed_epsilon)}: "
                  + "; ".join(f"{_cell(e.display)} on {_cell(e.attack or '-')} {fmt_eps(e.epsilon_lb)} "
                              f"({'exceeds' if e.exceeds_claim else 'below' if e.is_bound else 'not counted'})"
                              for e in sec.bounds), ""]
    if sec.rows:
        lines += ["| canary | member | exposure (sampled) | exposure (extrapolated) | greedy | sampled hits |",
                  "|---|---|---:|---:|---|---:|"]
        for r in sec.top_rows(TOP_SECRETS):
            greedy = "-" if r.greedy_hit is None else ("extracted" if r.greedy_hit else "no")
            lines.append(f"| {_cell(r.id)} | {'yes' if r.member else 'no'} | {fmt_num(r.exposure, '.2f')} | "
                         f"{fmt_num(r.exposure_extrapolated, '.2f')} | {greedy} | "
                         f"{'-' if r.sampled_hits is None else r.sampled_hits} |")
        lines.append("")
    return lines


def render_comparison_markdown(cmp: ComparisonView) -> str:
    lines = [f"## dp-audit: comparison of {len(cmp.rows)} runs", "",
             "| run | trainer / mode | claimed ε | max ε_LB | best AUC | TPR at 0.1% FPR | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in cmp.rows:
        lines.append(f"| {_cell(r.label)} | {_cell(r.trainer_mode)} | {fmt_eps(r.claimed_epsilon)} | "
                     f"{fmt_eps(r.epsilon_lb_max)} | {fmt_num(r.best_auc, '.3f')} | {fmt_num(r.tpr_at_0_1, '.3f')} | "
                     f"{ICONS.get(r.status, '⚪')} {r.status.upper()} |")
    lines += ["", "A lower bound can refute a claim, never prove it."]
    return "\n".join(lines) + "\n"


__all__ = ["render_markdown", "render_comparison_markdown"]
