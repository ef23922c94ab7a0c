"""Speed of the step-level audit: trials per second of the DP-Flat (AWP paper) step, batched
(one forward/backward per chunk + Opacus' noise for every trial) and one trial at a time through
the real step, next to the same count of plain DP-SGD steps (Opacus, the same synthetic model).
Prints ratios measured in this run (DESIGN.md §11), and the time of 10^4 DP-Flat trials.

Usage: python benchmarks/step_audit_speed.py [--trials 10000] [--loop-trials 1000]
"""

from __future__ import annotations

import argparse
import time

from dp_audit.stepaudit import step_audit
from dp_audit.stepaudit.constructions import build


def _rate(cons, trials: int, batched: bool) -> tuple[float, float]:
    t = time.perf_counter()
    step_audit(cons, trials=trials, seed=0, progress=False, batched=batched)
    dt = time.perf_counter() - t
    return 2 * trials / dt, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=10_000, help="trials per side, batched")
    ap.add_argument("--loop-trials", type=int, default=1_000, help="trials per side, one real step each")
    args = ap.parse_args()
    rows = []
    for name in ("dpflat-awp-paper", "dpflat-awp-per-example", "dpsgd-dirac", "dpzo-gaussian"):
        cons = build(name)
        fast, t_fast = _rate(cons, args.trials, True)
        slow, _ = _rate(cons, args.loop_trials, False)
        rows.append((name, fast, slow, t_fast))
    plain = dict((r[0], r[2]) for r in rows)["dpsgd-dirac"]  # one real Opacus DP-SGD step per trial
    print(f"trials per second (2 x {args.trials} batched, 2 x {args.loop_trials} one real step each)\n")
    print("| construction | batched trials/s | real-step trials/s | batched / plain DP-SGD steps | "
          f"time of 2 x {args.trials} trials |")
    print("|---|---|---|---|---|")
    for name, fast, slow, t in rows:
        print(f"| {name} | {fast:,.0f} | {slow:,.0f} | {fast / plain:,.0f}x | {t:.2f} s |")
    print(f"\nplain DP-SGD steps (Opacus, same model): {plain:,.0f} steps/s; "
          f"10^4 DP-Flat paper trials per side batched: {2e4 / rows[0][1]:.2f} s, "
          f"one real step each: {2e4 / rows[0][2]:.0f} s")


if __name__ == "__main__":
    main()
