"""``dp-audit study awp-leak``: the issue-17 study as one resumable command (docs/awp-leak.md)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dp_audit.errors import UsageError

EPILOG = """example:
  dp-audit study awp-leak --out study-run --quick   # a few minutes on 2 CPU cores
  rerun the same command to resume after an interruption (finished arms are reused);
  then read study-run/study.md, study-run/study.html and study-run/comparison/report.html"""


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="run a whole study (awp-leak): train, audit and step-audit every arm",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=["awp-leak"], help="which study")
    p.add_argument("--out", type=Path, required=True, help="study directory (new, empty, or an earlier run of the same study to resume)")
    p.add_argument("--quick", action="store_true", help="small configs: the whole study in a few minutes")
    p.add_argument("--trials", type=int, default=None, help="step-level trials per side (default 20000 quick, 100000 full)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training runs and the step audits (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from dp_audit.scale.cli import add_arguments as add_scale_arguments

    add_scale_arguments(p, "the arms and sweep points; default: one after the other in this process")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dp_audit.study.arms import awp_leak_arms, awp_leak_sweeps
    from dp_audit.study.runner import run_study, study_settings

    if args.trials is not None and args.trials < 100:
        raise UsageError(f"--trials must be at least 100, got {args.trials}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    t0 = time.time()
    settings = study_settings(quick=args.quick, trials=args.trials, seed=args.seed)
    from dp_audit.scale.cli import from_args as scale_from_args

    res = run_study(args.out, arms=awp_leak_arms(), sweeps=awp_leak_sweeps(), settings=settings,
                    progress=not args.quiet, log=lambda s: print(s, flush=True), scale=scale_from_args(args, None))
    print(f"[study] done in {time.time() - t0:.0f} s ({len(res.computed)} computed, {len(res.skipped)} reused)")
    return 0
