"""``dp-audit estimate``: any estimator on a saved scores.npz."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dp_audit.errors import UsageError

EPILOG = """examples:
  dp-audit estimate --scores runs/r1/scores/loss.npz --method steinke --alpha 0.05 --delta 1e-5
  dp-audit estimate --scores trials.npz --method gdp --threshold heldout --json
  dp-audit estimate --scores s.npz --method fdp --threshold fixed --fixed-k 100,100
  dp-audit estimate --scores s.npz --method fdp --fdp-null gdp     # refutes μ-GDP only
  dp-audit estimate --list

scores.npz holds 'scores' (float, higher = more likely member) and 'member' (bool).
steinke/fdp: one training run, canary membership Bernoulli(1/2). clopper-pearson/gdp: one score
per independent run. raw: ln(TPR/FPR), an estimate, not a bound. fdp's null: eps-delta (default,
valid for any (ε, δ)-DP mechanism) or gdp (tighter, valid only for Gaussian-shaped mechanisms).
docs/estimators.md."""


def add_parser(sub) -> None:
    p = sub.add_parser("estimate", help="empirical ε lower bound from a scores file", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", type=Path, help="scores.npz ('scores', 'member')")
    p.add_argument("--method", default="steinke", help="steinke | fdp | clopper-pearson | gdp | raw")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence (default 0.05)")
    p.add_argument("--delta", type=float, default=1e-5, help="δ of the claim being tested (default 1e-5)")
    p.add_argument("--threshold", default="bonferroni", help="bonferroni | heldout | fixed")
    p.add_argument("--fixed-k", help="with --threshold fixed (one-run): K or K_PLUS,K_MINUS")
    p.add_argument("--fixed-threshold", type=float, help="with --threshold fixed: member iff score >= T")
    p.add_argument("--fdp-null", default="eps-delta", help="fdp only: eps-delta (default) | gdp")
    p.add_argument("--sided", default="two-sided", help="two-sided | one-sided guesses / tests")
    p.add_argument("--threat-model", default="black-box", help="black-box | white-box | step-level")
    p.add_argument("--seed", type=int, default=0, help="seed of tie-breaking and held-out splits")
    p.add_argument("--json", action="store_true", help="print the EpsilonEstimate as JSON")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    p.set_defaults(func=run)


def _fixed_k(text: str | None):
    if text is None:
        return None
    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--fixed-k must be K or K_PLUS,K_MINUS, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 0:
        raise UsageError(f"--fixed-k must be K or K_PLUS,K_MINUS (non-negative), got {text!r}")
    return (parts[0], parts[1] if len(parts) == 2 else 0)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from dp_audit.estimate import ESTIMATORS, estimate_epsilon
    from dp_audit.io import dumps_json, load_scores

    if args.list:
        for name in ESTIMATORS:
            cls = ESTIMATORS.get(name)
            kind = "bound" if cls.is_bound else "estimate, not a bound"
            print(f"{name:<16} {cls.design:<9} {kind:<22} {cls.reference}")
        return 0
    if args.scores is None:
        raise UsageError("--scores FILE is required (or --list)")
    scores, member = load_scores(args.scores)
    est = estimate_epsilon(scores, member, method=args.method, alpha=args.alpha, delta=args.delta,
                           threshold=args.threshold, threat_model=args.threat_model, fixed_k=_fixed_k(args.fixed_k),
                           fixed_threshold=args.fixed_threshold, sided=args.sided, fdp_null=args.fdp_null,
                           rng=np.random.default_rng(args.seed))
    if args.json:
        sys.stdout.write(dumps_json(est))
        return 0
    kind = f"ε_LB = {est.epsilon_lb:.4f} at {100 * (1 - est.alpha):g}% confidence" if est.is_bound else \
        f"ε ≈ {est.epsilon_lb:.4f} (estimate, not a bound)"
    counts = f"m={est.m}" + (f", r={est.r}, v={est.v}" if est.r is not None else "")
    if est.method == "fdp":
        counts += f"; null {est.details.get('null')}"
    if est.details.get("validity"):
        counts += f"; {est.details['validity']}"
    print(f"{est.method}: {kind} (δ={est.delta:g}; {counts}; threshold {est.threshold}; {est.threat_model})")
    return 0
