"""Numbers of issue 17's second milestone (docs/awp-leak.md): constructions (c) distillation,
(d) sparse selection, (e) the regulariser escaping clipping (trials needed to refute vs λ), and
(a)/(b) on the real prefix-tuned tiny transformer. One run on the machine at hand; prints tables.

    python benchmarks/step_audit_components.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings

from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build


def row(name: str, trials: int, seed: int = 0, **opts) -> str:
    cons = build(name, **opts)
    t0 = time.perf_counter()
    r = step_audit(cons, trials=trials, seed=seed, progress=False)
    dt = time.perf_counter() - t0
    by = r.eps_lb_by_method
    mu = cons.info.get("expected_mu")
    return (f"| {name} | {', '.join(f'{k}={v:g}' for k, v in opts.items()) or '-'} | {trials} | "
            f"{r.claim_epsilon:.3f} | {by['clopper-pearson']:.3f} | {by.get('gdp', float('nan')):.3f} | "
            f"{'-' if mu is None else f'{mu:.4f}'} | {'yes' if r.refuted else 'no'} | {dt:.1f} s |")


def trials_needed(lam: float, *, seeds: int, start: int, stop: int) -> tuple[int | None, list[bool]]:
    """Smallest N (per side, doubling from ``start``) at which a majority of ``seeds`` refute."""
    cons = build("dpflat-distill-escape", sigma=1.0, lam=lam)
    n = start
    while n <= stop:
        hits = [step_audit(cons, trials=n, seed=s, progress=False).refuted for s in range(seeds)]
        if sum(hits) * 2 > seeds:
            return n, hits
        n *= 2
    return None, []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", default="all", help="all | escape | components | transformer")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    head = ("| construction | options | N per side | claim ε | ε_LB CP | ε_LB GDP | expected μ | refuted | time |\n"
            "|---|---|---|---|---|---|---|---|---|")
    if args.part in ("all", "components"):
        print("## (c) distillation, (d) sparse selection (synthetic model, σ = 1, C = 1, B = 8, seed 0)\n")
        print(head)
        for lam in (0.01, 0.1, 1.0):
            for mode in ("paper", "public"):
                print(row(f"dpflat-distill-{mode}", 10_000, lam=lam), flush=True)
        for mode in ("paper", "public"):
            print(row(f"dpflat-sparse-{mode}", 10_000), flush=True)
        print()
    if args.part in ("all", "escape"):
        print("## (e) the regulariser escaping clipping: trials needed (σ = 1, C = 1; true μ = C + λ)\n")
        print("| λ | true μ | smallest N per side refuting in ≥ 2 of 3 seeds | seconds |\n|---|---|---|---|")
        for lam in ((1.0, 0.3, 0.1) if args.quick else (1.0, 0.3, 0.1, 0.03, 0.01)):
            t0 = time.perf_counter()
            n, _ = trials_needed(lam, seeds=3, start=250, stop=8_192_000)
            print(f"| {lam:g} | {1 - 1e-5 + lam:.5f} | {n if n else '> 8 192 000'} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
        print()
    if args.part in ("all", "transformer"):
        print("## (a), (b) on the tiny prefix-tuned BERT (σ = 1, C = 1e-3, B = 8, float64, seed 0)\n")
        print(head)
        n = 10_000 if args.quick else 100_000
        print(row("transformer-dpsgd", n), flush=True)
        for gamma in (1e-4, 1e-2, 1e-1):
            print(row("transformer-awp-paper", n, gamma=gamma), flush=True)
        for mode in ("dpsat", "per-example"):
            print(row(f"transformer-awp-{mode}", n, gamma=0.1), flush=True)


if __name__ == "__main__":
    main()
