"""k-step audits (docs/awp-leak.md, "k-step audits").

1. DP-SGD Dirac canary, k steps (Opacus, q = 1, σ): ε_LB / ε_true(√k/σ, δ) over seeds, batched over
   replicas; trials/s batched (replicas) next to unbatched (step_fn + advance, one trial after the
   other) for the same k.
2. The constructions that support k steps (DP-Flat AWP modes, DP-ZO) at k steps: composed claim,
   ε_LB per estimator, verdict, trials/s (unbatched).

Usage: python benchmarks/step_audit_ksteps.py [--steps 4] [--trials 10000] [--seeds 4] [--other-trials 400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build
from dp_audit.stepaudit.trials import run_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--other-trials", type=int, default=400)
    ap.add_argument("--other-steps", type=int, default=3)
    args = ap.parse_args()
    k = args.steps
    cons = build("dpsgd-dirac", steps=k)
    runs = [step_audit(cons, trials=args.trials, seed=s, progress=False, steps=k) for s in range(args.seeds)]
    tight = np.array([r.eps_lb / r.claim_epsilon for r in runs])
    print(f"DP-SGD Dirac, k = {k} steps (σ = 1): claim √k/σ = {runs[0].claim_mu:g}-GDP, ε = {runs[0].claim_epsilon:.3f} "
          f"(PLD cross-check {runs[0].composition['pld_epsilon']:.3f}); N = {args.trials} per side, {args.seeds} seeds")
    print(f"  tightness ε_LB/ε_true: min {tight.min():.3f} mean {tight.mean():.3f} max {tight.max():.3f}; "
          f"refuted in {sum(r.refuted for r in runs)} of {len(runs)}")
    t0 = time.perf_counter()
    run_trials(cons, trials=2000, seed=0, steps=k, progress=False)
    tb = 4000 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    run_trials(cons, trials=200, seed=0, steps=k, progress=False, batched=False)
    tu = 400 / (time.perf_counter() - t0)
    print(f"  speed ({k}-step trials/s): batched over replicas {tb:.0f}, unbatched {tu:.0f} (x{tb / tu:.1f})\n")
    kk = args.other_steps
    print(f"| construction (k = {kk}) | composed claim ε (μ) | ε_LB CP | ε_LB GDP | refuted | trials/s |")
    print("|---|---|---|---|---|---|")
    for name in ("dpflat-awp-paper", "dpflat-awp-dpsat", "dpflat-awp-per-example", "dpzo-gaussian", "dpzo-laplace"):
        c = build(name, steps=kk) if name.startswith("dpflat") else build(name)
        r = step_audit(c, trials=args.other_trials, seed=0, progress=False, steps=kk)
        by = r.eps_lb_by_method
        mu = f" ({r.claim_mu:.3g})" if r.claim_mu is not None else ""
        gdp = f"{by['gdp']:.3f}" if "gdp" in by else "not counted"
        print(f"| {name} | {r.claim_epsilon:.3f}{mu} | {by['clopper-pearson']:.3f} | {gdp} | "
              f"{'yes' if r.refuted else 'no'} | {r.timings['trials_per_second']:.0f} |")


if __name__ == "__main__":
    main()
