"""Step-level audit tightness and verdicts (docs/awp-leak.md).

1. DP-SGD Dirac canary (one Opacus step, q = 1, σ): ε_LB / ε_true(μ = 1/σ, δ) at N trials per
   side, over several seeds, for both threshold strategies; target >= 0.9 at N = 10^5.
2. Every built-in construction at N trials: claimed per-step ε, ε_LB per estimator, verdict.

Usage: python benchmarks/step_audit_tightness.py [--trials 100000] [--seeds 5] [--sigma 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import CONSTRUCTIONS, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    t0 = time.perf_counter()
    true = gdp_epsilon(args.delta, 1 / args.sigma)
    cons = build("dpsgd-dirac", sigma=args.sigma, delta=args.delta)
    print(f"DP-SGD Dirac canary, σ={args.sigma:g} (μ={1 / args.sigma:g}), δ={args.delta:g}: ε_true = {true:.3f}; "
          f"N = {args.trials} trials per side, α = {args.alpha}\n")
    print("| threshold | estimator | ε_LB / ε_true: min | mean | max |")
    print("|---|---|---|---|---|")
    for thr in ("calibration", "bonferroni"):
        runs = [step_audit(cons, trials=args.trials, alpha=args.alpha, seed=s, progress=False, threshold=thr)
                for s in range(args.seeds)]
        for method in ("clopper-pearson", "gdp"):
            r = np.array([x.eps_lb_by_method[method] for x in runs]) / true
            print(f"| {thr} | {method} | {r.min():.3f} | {r.mean():.3f} | {r.max():.3f} |")
        best = np.array([x.eps_lb for x in runs]) / true
        print(f"| {thr} | counted max | {best.min():.3f} | {best.mean():.3f} | {best.max():.3f} |")
    print(f"\nevery construction, N = {args.trials} per side, seed 0 (σ = {args.sigma:g} where it applies)\n")
    print("| construction | claim ε (μ) | ε_LB CP | ε_LB GDP | refuted | trials/s |")
    print("|---|---|---|---|---|---|")
    for name in CONSTRUCTIONS:
        opts = {"sigma": args.sigma} if name.startswith(("dpsgd", "dpflat", "dpzo-gaussian")) else {}
        c = build(name, delta=args.delta, **opts)
        r = step_audit(c, trials=args.trials, alpha=args.alpha, seed=0, progress=False)
        by = r.eps_lb_by_method
        mu = f" ({c.claim_mu:g})" if c.claim_mu is not None else ""
        gdp = f"{by['gdp']:.3f}" if "gdp" in by else "not counted"
        print(f"| {name} | {c.claim_epsilon:.3f}{mu} | {by['clopper-pearson']:.3f} | {gdp} | "
              f"{'yes' if r.refuted else 'no'} | {r.timings['trials_per_second']:.0f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
