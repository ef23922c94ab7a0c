"""Power of the gate's α spending (issue 12, item 11): on the same simulated μ-GDP canary scores
(members N(μ, 1), non-members N(0, 1), membership Bernoulli(1/2)), the mean ε_LB and the
refutation power (fraction of seeds whose verdict is "fail") of three policies, through
dp_audit.gate.gate_scores (the gate's own decision):

- ``fdp``: the one-run f-DP test ((ε, δ) null) alone at α (the default);
- ``steinke``: Steinke et al. alone at α;
- ``steinke+fdp``: both, α/2 each (the previous default).

Also prints the time of one Steinke and one f-DP estimate over 10^6 scores (best of 3, this
machine, this run). Measured numbers, not pass/fail. Usage:
python benchmarks/gate_power.py [--seeds 100] [--mus 1,2] [--ms 1000,10000] [--claims 1,2,3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dp_audit.estimate import estimate_epsilon
from dp_audit.estimate.gdp_math import gdp_epsilon
from dp_audit.gate import GatePolicy, ScoreSet, gate_scores

POLICIES = {"fdp": ("fdp",), "steinke": ("steinke",), "steinke+fdp": ("steinke", "fdp")}


def power_table(*, mus, ms, claims, seeds: int, alpha: float, delta: float) -> None:
    head = " | ".join(f"{p} mean ε_LB" for p in POLICIES)
    powers = " | ".join(f"{p} power@{c:g}" for c in claims for p in POLICIES)
    print(f"| μ | ε_true | m | {head} | {powers} |")
    print("|---|---|---|" + "---|" * (len(POLICIES) * (1 + len(claims))))
    for mu in mus:
        true = gdp_epsilon(delta, mu)
        for m in ms:
            rng = np.random.default_rng([int(mu * 100), m])
            member = rng.random((seeds, m)) < 0.5
            scores = rng.normal(mu * member, 1.0)
            lbs = {p: np.empty(seeds) for p in POLICIES}
            for s in range(seeds):
                sets = [ScoreSet("canaries", scores[s], member[s])]
                for p, est in POLICIES.items():
                    res = gate_scores(sets, claimed_epsilon=float("inf"), delta=delta,
                                      policy=GatePolicy(estimators=est, alpha=alpha))
                    lbs[p][s] = res.verdict.epsilon_lb_max
            # a claim c is refuted iff the largest counted ε_LB exceeds it (same α split)
            cells = [f"{lbs[p].mean():.3f}" for p in POLICIES]
            cells += [f"{np.mean(lbs[p] > c):.2f}" for c in claims for p in POLICIES]
            print(f"| {mu:g} | {true:.2f} | {m} | " + " | ".join(cells) + " |", flush=True)


def timing(n: int, mu: float = 2.0) -> None:
    rng = np.random.default_rng(0)
    member = rng.random(n) < 0.5
    scores = rng.normal(mu * member, 1.0)
    for method in ("steinke", "fdp"):
        best = float("inf")
        for rep in range(3):
            if method == "steinke":
                from dp_audit.estimate.onerun import steinke_epsilon

                steinke_epsilon.cache_clear()
            else:
                from dp_audit.estimate.onerun import fdp_epsilon

                fdp_epsilon.cache_clear()
            t = time.perf_counter()
            est = estimate_epsilon(scores, member, method=method, rng=np.random.default_rng(rep))
            best = min(best, time.perf_counter() - t)
        print(f"{method:<8} on {n} scores (μ = {mu:g}): ε_LB {est.epsilon_lb:.3f}, best of 3: {best:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--mus", default="1,2")
    ap.add_argument("--ms", default="1000,10000")
    ap.add_argument("--claims", default="1,2,3")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--n-time", type=int, default=1_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"gate power over {args.seeds} seeds (α = {args.alpha}, δ = {args.delta}, threshold = bonferroni)\n")
    power_table(mus=[float(x) for x in args.mus.split(",")], ms=[int(x) for x in args.ms.split(",")],
                claims=[float(x) for x in args.claims.split(",")], seeds=args.seeds, alpha=args.alpha,
                delta=args.delta)
    print()
    timing(args.n_time)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
