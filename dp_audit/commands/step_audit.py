"""``dp-audit step-audit``: the step-level audit of one training step (DESIGN.md §7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dp_audit.errors import EXIT_OK, EXIT_VIOLATION, UsageError

EPILOG = """examples:
  dp-audit step-audit --construction dpflat-awp-paper --trials 10000 --out runs/step-paper
  dp-audit step-audit --construction dpsgd-dirac --trials 100000 --sigma 1 --delta 1e-5 --out runs/step-dpsgd
  dp-audit step-audit --construction dpzo-laplace --epsilon-step 1 --trials 20000 --out runs/step-zo
  dp-audit step-audit --construction dpsgd-dirac --steps 4 --trials 20000 --out runs/step-dpsgd-k4
  dp-audit step-audit --list

Runs one training step N times on d0 (no canary) and N times on d1 (with the canary) from a
state the construction fixes, scores each released update with a statistic fixed in advance and
bounds the step's ε at confidence 1 - alpha. --steps k: each trial runs k consecutive steps (the
state evolves, the canary is in d1 at every step, the release is the sum of the k updates) and the
claim is the k-fold composition of the per-step claim (sqrt(k)*mu for Gaussian steps, the PLD of
k Laplace steps) (Clopper-Pearson; plus GDP when the step claims
μ-GDP, α split between them). The threshold is chosen on a calibration split (default 10% of
each side) and tested on the rest. Writes OUT/manifest.json, OUT/trials.npz, OUT/step_audit.json.
docs/awp-leak.md.

exit codes: 0 claim not refuted, 1 per-step claim refuted (ε_LB > claim at 1 - alpha),
2 usage error, 3 integrity error."""

OPTIONS = ("sigma", "mu", "epsilon_step", "gamma", "clip", "batch_size", "lam")


def add_parser(sub) -> None:
    from dp_audit.scale.cli import add_arguments as add_scale_arguments

    p = sub.add_parser("step-audit", help="step-level audit: does one training step keep its per-step claim?",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--construction", help="a built-in construction (see --list)")
    p.add_argument("--trials", type=int, default=10_000, help="trials per side, d0 and d1 each (default 10000)")
    p.add_argument("--steps", type=int, default=1,
                   help="consecutive steps per trial; the claim is their composition (default 1)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence (default 0.05)")
    p.add_argument("--delta", type=float, default=1e-5, help="δ of the per-step claim (default 1e-5)")
    p.add_argument("--seed", type=int, default=0, help="seed of every trial's generator (default 0)")
    p.add_argument("--out", type=Path, help="output directory (must not hold an audit yet)")
    p.add_argument("--threshold", default="calibration", help="calibration (default) | bonferroni")
    p.add_argument("--calibration-fraction", type=float, default=0.1,
                   help="share of each side's trials that chooses the threshold (default 0.1)")
    p.add_argument("--sigma", type=float, help="noise multiplier σ (DP-SGD, DP-Flat, DP-ZO Gaussian; default 1)")
    p.add_argument("--mu", type=float, help="μ of the reference 'gaussian' constructions (default 1)")
    p.add_argument("--epsilon-step", type=float, help="ε0 of the Laplace DP-ZO step (default 1)")
    p.add_argument("--gamma", type=float, help="AWP radius γ of the DP-Flat constructions (default 1e-4)")
    p.add_argument("--clip", type=float, help="clipping norm C (default 1)")
    p.add_argument("--lam", type=float, help="distillation weight λ of the dpflat-distill constructions (default 0.1)")
    p.add_argument("--batch-size", type=int, help="examples in d1 (canary included; default 8)")
    p.add_argument("--unbatched", action="store_true", help="run every trial through step_fn (slow; for checks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the constructions and exit")
    add_scale_arguments(p, "trial chunks, --chunk trials each; default: in this process")
    p.add_argument("--chunk", type=int, default=4096, help="trials per chunk (default 4096; its own seed each)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dp_audit.scale.cli import from_args as scale_from_args

    import inspect

    from dp_audit.stepaudit import step_audit, summary_line
    from dp_audit.stepaudit.constructions import CONSTRUCTIONS, build

    if args.list:
        for name in CONSTRUCTIONS:
            doc = (CONSTRUCTIONS.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:<24} {doc[0] if doc else ''}")
        return EXIT_OK
    if not args.construction:
        raise UsageError("--construction NAME is required (see --list)")
    if args.out is None:
        raise UsageError("--out DIR is required")
    options = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    if args.steps != 1 and "steps" in inspect.signature(CONSTRUCTIONS.get(args.construction)).parameters:
        options["steps"] = args.steps  # the builder chooses a state fit for k steps (docs/awp-leak.md)
    cons = build(args.construction, delta=args.delta, **options)
    res = step_audit(cons, trials=args.trials, alpha=args.alpha, seed=args.seed, progress=not args.no_progress,
                     threshold=args.threshold, calibration_fraction=args.calibration_fraction,
                     batched=False if args.unbatched else None, out=args.out, steps=args.steps,
                     chunk=args.chunk, scale=scale_from_args(args, None))
    print(summary_line(res))
    print(f"wrote {args.out}/step_audit.json, trials.npz, manifest.json")
    return EXIT_VIOLATION if res.refuted else EXIT_OK
