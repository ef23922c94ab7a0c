"""``dp-audit report``: render a run's audit.json (or a comparison of several runs) as HTML, PDF,
Markdown and JSON. Pure rendering: no model is read and nothing is recomputed."""

from __future__ import annotations

import argparse
from pathlib import Path

from dp_audit.errors import UsageError

EPILOG = """examples:
  dp-audit report --run runs/dpsgd                          # report.html, report.pdf, report.md, report.json
  dp-audit report runs/step --pdf                           # a step-audit directory: report.html (+ report.pdf)
  dp-audit report --run runs/dpsgd --format md --out ci/    # only the CI job summary
  dp-audit report --run runs/dpsgd --run runs/dpflat-paper --run runs/dpflat-private --out runs/compare

One --run writes into the run directory (or --out); several --run write one comparison report
into --out (required). A step-audit directory (dp-audit step-audit --out DIR) gets report.html and,
with --pdf, report.pdf: construction, claim, trials, α, ε_LB per estimator, verdict, score
histograms, manifest hashes (every hash verified and every bound recomputed first). Formats: html (self-contained), pdf (WeasyPrint, the [pdf] extra; else a
matplotlib fallback), md (report.md), json (report.json).

exit codes: 0 written, 2 usage error (missing run directory or audit.json, unknown format),
3 integrity error (malformed audit.json, a hash mismatch, a step audit whose bounds do not follow
from its trials)."""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="render audit reports (HTML, PDF, Markdown, JSON) from audit.json",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, nargs="?", metavar="DIR",
                   help="a run directory (as --run) or a step-audit directory")
    p.add_argument("--run", type=Path, action="append", metavar="DIR",
                   help="run directory with audit.json (repeat for a comparison report)")
    p.add_argument("--format", default=None, metavar="LIST",
                   help="comma-separated formats: html,pdf,md,json (default: all; a step audit: html)")
    p.add_argument("--pdf", action="store_true", help="a step-audit directory: also write report.pdf")
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: the run directory)")
    p.add_argument("--pdf-engine", default="auto", choices=("auto", "weasyprint", "matplotlib"),
                   help="PDF renderer (default auto: WeasyPrint when installed)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check the sha256 of the files read against manifest.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dp_audit.reports import parse_formats, render_comparison, render_run
    from dp_audit.reports.stepaudit import is_step_audit_dir

    dirs = ([args.target] if args.target is not None else []) + list(args.run or [])
    if not dirs:
        raise UsageError("give a run or step-audit directory (dp-audit report DIR, or --run DIR)")
    steps = [d for d in dirs if is_step_audit_dir(d)]
    if steps:
        if len(dirs) > 1:
            raise UsageError(f"{steps[0]} is a step-audit directory: report it alone (no comparison of step audits)")
        return _step_report(args, dirs[0])
    formats = parse_formats(args.format or "html,pdf,md,json")
    args.run = dirs
    for d in args.run:
        if not d.is_dir():
            raise UsageError(f"run directory not found: {d}")
        if not (d / "audit.json").is_file():
            raise UsageError(f"{d / 'audit.json'} not found: run `dp-audit run --run {d}` first")
    verify = not args.no_verify
    if len(args.run) == 1:
        outputs = render_run(args.run[0], formats=formats, out_dir=args.out, pdf_engine=args.pdf_engine,
                             verify=verify)
        _refresh_listed(args.run[0], outputs.values())
    else:
        if args.out is None:
            raise UsageError("several --run directories make one comparison report: give --out DIR")
        outputs = render_comparison(args.run, out_dir=args.out, formats=formats, pdf_engine=args.pdf_engine,
                                    verify=verify)
    for name, path in outputs.items():
        print(f"wrote {path} ({name})")
    return 0


def _step_report(args: argparse.Namespace, d: Path) -> int:
    from dp_audit.reports import parse_formats
    from dp_audit.reports.stepaudit import render_step_audit

    formats = parse_formats(args.format or "html")
    unknown = sorted(set(formats) - {"html", "pdf"})
    if unknown:
        raise UsageError(f"a step-audit report is html (and pdf); not {', '.join(unknown)}")
    if args.no_verify:
        raise UsageError("a step-audit report always verifies its directory (--no-verify is for runs)")
    outputs = render_step_audit(d, pdf=args.pdf or "pdf" in formats, out_dir=args.out, pdf_engine=args.pdf_engine)
    for name, path in outputs.items():
        print(f"wrote {path} ({name})")
    return 0


def _refresh_listed(run_dir: Path, written) -> None:
    """Runs made by dp-audit 0.1 list their report files in the manifest: re-rendering one changes
    its bytes, so refresh those hashes (only those), or the next gate would see a mismatch."""
    from dp_audit.manifest import MANIFEST, add_artifacts, load_manifest

    if not (run_dir / MANIFEST).is_file():
        return
    listed = load_manifest(run_dir, verify=False)["artifacts"]
    root = run_dir.resolve()
    stale = [p.resolve().relative_to(root).as_posix() for p in written
             if p.resolve().parent == root and p.resolve().relative_to(root).as_posix() in listed]
    if stale:
        add_artifacts(run_dir, stale)
