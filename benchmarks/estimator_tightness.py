"""Tightness of every bound on simulated Gaussian mechanisms: mean ε_LB / ε_true over seeds, for
m in {100, 1000, 10000} (members N(μ,1), non-members N(0,1), true ε from μ-GDP at δ).
Prints the Markdown table used in docs/estimators.md, and the f-DP / Steinke ratios on the same
scores. ``fdp`` uses the (ε, δ) null (valid for any mechanism), ``fdp-gdp`` the μ-GDP null (valid
here, since the simulated mechanism is μ-GDP; not in general). Usage: python benchmarks/estimator_tightness.py [--seeds 20] [--mus 1,2,4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dp_audit.estimate import estimate_epsilon
from dp_audit.estimate.gdp_math import gdp_epsilon

METHODS = ("steinke", "fdp", "fdp-gdp", "clopper-pearson", "gdp")


def _kw(name: str) -> dict:
    return {"method": "fdp", "fdp_null": "gdp"} if name == "fdp-gdp" else {"method": name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--mus", default="1,2,4")
    ap.add_argument("--ms", default="100,1000,10000")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=1e-5)
    args = ap.parse_args()
    mus = [float(x) for x in args.mus.split(",")]
    ms = [int(x) for x in args.ms.split(",")]
    t0 = time.perf_counter()
    print(f"mean ε_LB / ε_true over {args.seeds} seeds (α={args.alpha}, δ={args.delta}, threshold=bonferroni)\n")
    print("| μ | ε_true | m | " + " | ".join(METHODS) + " | fdp / steinke | fdp-gdp / steinke |")
    print("|---|---|---|" + "---|" * len(METHODS) + "---|---|")
    for mu in mus:
        true = gdp_epsilon(args.delta, mu)
        for m in ms:
            vals = {meth: [] for meth in METHODS}
            for s in range(args.seeds):
                rng = np.random.default_rng([s, m, int(mu * 100)])
                member = rng.random(m) < 0.5
                scores = rng.normal(mu * member, 1.0)
                for meth in METHODS:
                    vals[meth].append(estimate_epsilon(scores, member, **_kw(meth), alpha=args.alpha,
                                                       delta=args.delta, rng=rng).epsilon_lb)
            means = {k: float(np.mean(v)) for k, v in vals.items()}
            ratio = means["fdp"] / means["steinke"] if means["steinke"] > 0 else float("nan")
            ratio_gdp = means["fdp-gdp"] / means["steinke"] if means["steinke"] > 0 else float("nan")
            print(f"| {mu:g} | {true:.2f} | {m} | " + " | ".join(f"{means[k] / true:.3f}" for k in METHODS)
                  + f" | {ratio:.2f} | {ratio_gdp:.2f} |", flush=True)
    print(f"\n(steinke, fdp: one-run; clopper-pearson, gdp: the same scores read as independent runs.)")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
