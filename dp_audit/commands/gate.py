"""``dp-audit gate``: refute (or not) a run's privacy claim; exit 0 pass, 1 violation."""

from __future__ import annotations

import argparse
from pathlib import Path

from dp_audit.errors import EXIT_OK, EXIT_VIOLATION

EPILOG = """examples:
  dp-audit gate --run runs/r1
  dp-audit gate --run runs/r1 --policy gate.toml --junit reports/gate.xml
  cat runs/r1/summary.md >> "$GITHUB_STEP_SUMMARY"

gate.toml keys (all optional): attacks ("all" or a list), estimators (default ["fdp"]; add
"steinke" to split α with it), alpha (0.05, split over every counted attack x estimator pair),
tolerance (0.0), threshold ("bonferroni" | "heldout"), seed (0), claim_model ("eps-delta" |
"mu-gdp": the gdp estimator is counted only under "mu-gdp"), on_unaccounted ("warn" | "fail").
See docs/gate.md and examples/gate.toml.

exit codes: 0 pass, 1 claim refuted (an ε lower bound above the claim, or, with on_unaccounted =
"fail", parts of training the claim does not cover), 2 usage error (bad policy, missing audit),
3 integrity error (a hash mismatch, an edited manifest or scores file, a missing or invalid signature
with --require-signature), 4 internal error."""


def add_parser(sub) -> None:
    p = sub.add_parser("gate", help="CI gate: fail when an empirical ε lower bound exceeds the claim",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True,
                   help="run directory with audit.json, or a step-audit directory (dp-audit step-audit --out)")
    p.add_argument("--policy", type=Path, help="gate policy TOML (default: built-in policy)")
    p.add_argument("--summary", type=Path, help="Markdown summary to write (default: RUN/summary.md)")
    p.add_argument("--junit", type=Path, help="JUnit XML to write (default: RUN/gate.junit.xml)")
    p.add_argument("--require-signature", action="store_true",
                   help="exit 3 unless manifest.json carries a valid HMAC signature by the key in "
                        "$DP_AUDIT_SIGNING_KEY (docs/reliability.md)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from dp_audit.safetext import one_line
    from dp_audit.gate import (JUNIT, SUMMARY, evaluate_gate, load_policy, not_counted_reason, verdict_line,
                               write_outputs)

    policy = load_policy(args.policy)
    if args.require_signature:
        from dp_audit.manifest import load_manifest, verify_signature

        verify_signature(args.run, load_manifest(args.run, verify=False), required=True)
    result = evaluate_gate(args.run, policy)
    summary = args.summary or args.run / SUMMARY
    junit = args.junit or args.run / JUNIT
    write_outputs(result, summary=summary, junit=junit)
    # attack names, reasons and paths come from files a user controls: one printable line each
    for w in result.warnings:
        print(f"warning: {one_line(w)}", file=sys.stderr)
    if not args.quiet:
        for e in result.estimates:
            tag = "" if e.is_bound else f"  ({not_counted_reason(e)}; not counted)"
            print(f"  ε_LB {one_line(e.method):<16} on {one_line(e.attack):<12} {e.epsilon_lb:8.3f}  "
                  f"(α={e.alpha:.3g}){tag}")
    print(one_line(verdict_line(result)))
    if not args.quiet:
        print(one_line(f"wrote {summary} and {junit}"))
    return EXIT_VIOLATION if result.verdict.status == "fail" else EXIT_OK
