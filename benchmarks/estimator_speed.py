"""Time of one estimate over 10^6 scores per method (sorting and cumulative counts, no Python
loop over thresholds). Prints seconds measured in this run and the ratio to the time of one
np.sort of the same scores; not a pass/fail test. Usage: python benchmarks/estimator_speed.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dp_audit.estimate import METHODS, estimate_epsilon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--mu", type=float, default=2.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    member = rng.random(args.n) < 0.5
    scores = rng.normal(args.mu * member, 1.0)
    t = time.perf_counter()
    np.sort(scores)
    t_sort = time.perf_counter() - t
    print(f"n = {args.n} scores, μ = {args.mu}; one np.sort: {t_sort:.3f} s")
    for strategy in ("bonferroni", "heldout"):
        for method in METHODS:
            t = time.perf_counter()
            est = estimate_epsilon(scores, member, method=method, threshold=strategy, rng=np.random.default_rng(1))
            dt = time.perf_counter() - t
            flag = "" if dt < 1.0 else "   <-- over 1 s"
            print(f"{method:<16} {strategy:<10} ε_LB {est.epsilon_lb:7.3f}   {dt:6.3f} s   "
                  f"({dt / t_sort:5.1f} x one sort){flag}")


if __name__ == "__main__":
    main()
