"""Test accuracy on the built-in task: non-private, DP-SGD, DP-Flat (paper), DP-Flat (private) and
DP-ZO (Gaussian, Laplace) prefix tuning at several ε, several seeds (issue 5).

Every method tunes the same prefix (model.num_virtual_tokens virtual tokens, no reparametrisation)
of the same backbone on the same data (no canaries). The DP-Flat variants use the DP-SGD
settings plus their components; "paper" leaves parts unaccounted (its ε is the DP-SGD part only),
"private" is DP-correct (per-example AWP, public reference prefix for the layer selection and the
distillation). Prints a Markdown table (mean ± std over seeds) and writes JSON with every run.

Default size (~10 min on 2 cores): 3 seeds, ε ∈ {1, 3, 8}, 2 000 private examples, DP-SGD
for --epochs epochs, DP-ZO for --zo-epochs epochs (its steps are much cheaper).
Usage: python benchmarks/trainer_utility.py [--seeds 0,1] [--eps 1,3,8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

METHODS = ("nondp", "dpsgd", "dpflat-paper", "dpflat-private", "dpzo-gaussian", "dpzo-laplace")


def sections(method: str, args) -> dict:
    dp = {"train": {"epochs": args.epochs, "lr": args.lr}, "privacy": {"max_grad_norm": args.clip}}
    flat = {"awp": True, "sparse": True, "distill": True, "sparse_k": 1, "distill_epochs": args.ref_epochs}
    zo = {"train": {"epochs": args.zo_epochs, "lr": args.zo_lr, "optimizer": "sgd"},
          "dpzo": {"clip": args.zo_clip, "perturbation_scale": 1e-3}}
    return {
        "nondp": {"trainer": "nondp", "train": {"epochs": args.epochs, "lr": args.nondp_lr}},
        "dpsgd": {"trainer": "dpsgd", **dp},
        "dpflat-paper": {"trainer": "dpflat", **dp, "dpflat": {**flat, "awp_mode": "paper", "sparse_mode": "paper",
                                                                "distill_mode": "paper"}},
        "dpflat-private": {"trainer": "dpflat", **dp, "dpflat": {**flat, "awp_mode": "per-example",
                                                                  "sparse_mode": "public", "distill_mode": "public"}},
        "dpzo-gaussian": {"trainer": "dpzo", **zo, "dpzo": {**zo["dpzo"], "noise": "gaussian"}},
        "dpzo-laplace": {"trainer": "dpzo", **zo, "dpzo": {**zo["dpzo"], "noise": "laplace"}},
    }[method]


def merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", default="1,3,8")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the first-order trainers")
    ap.add_argument("--zo-epochs", type=int, default=40, help="epochs of DP-ZO")
    ap.add_argument("--ref-epochs", type=int, default=3, help="epochs of DP-Flat's non-private reference prefix")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--nondp-lr", type=float, default=1e-2)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--zo-lr", type=float, default=5e-2)
    ap.add_argument("--zo-clip", type=float, default=1.0)
    ap.add_argument("--virtual-tokens", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import dp_audit.trainers.registry  # noqa: F401
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import TRAINERS, prepare
    from dp_audit.trainers.modeling import accuracy, build_classifier

    base = {"model": {"tuning": "prefix", "num_virtual_tokens": args.virtual_tokens, "cache_dir": str(args.cache)},
            "data": {"n_train": args.n_train}, "canaries": {"m": 0},
            "train": {"batch_size": 64, "progress": False}}
    seeds = [int(s) for s in args.seeds.split(",")]
    epsilons = [float(e) for e in args.eps.split(",")]
    methods = args.methods.split(",")
    runs = []
    prep_cache: dict = {}
    t_start = time.time()
    for method in methods:
        for eps in ([None] if method == "nondp" else epsilons):
            for seed in seeds:
                d = merge(merge(base, sections(method, args)), {"train": {"seed": seed}})
                if eps is not None:
                    d = merge(d, {"privacy": {"epsilon": eps, "delta": 1e-5}})
                cfg = run_config_from_dict(d)
                key = (json.dumps(cfg.data.__dict__, sort_keys=True), cfg.model.num_virtual_tokens)
                if key not in prep_cache:
                    prep_cache[key] = prepare(cfg, cache_root=args.cache, progress=False)
                import dataclasses

                prep = dataclasses.replace(prep_cache[key], cfg=cfg)
                model = build_classifier(prep.backbone_dir, cfg.model, generator=torch.Generator().manual_seed(seed))
                t0 = time.time()
                res = TRAINERS.get(cfg.trainer)().fit(prep, model, generator=torch.Generator().manual_seed(seed + 1))
                acc = accuracy(res.model, prep.test)
                removed = res.extra.get("dpflat", {}).get("sparse", {}).get("removed_layers")
                runs.append({"method": method, "epsilon": eps, "seed": seed, "test_accuracy": acc,
                             "claimed_epsilon": res.claim.epsilon, "unaccounted": [u["component"] for u in res.claim.unaccounted],
                             "removed_layers": removed, "seconds": time.time() - t0})
                print(f"{method:>15} ε={eps} seed={seed}: test acc {acc:.3f}  ({time.time() - t0:.0f}s)"
                      f"{'  removed ' + str(removed) if removed is not None else ''}", flush=True)
    print(f"\ntotal {time.time() - t_start:.0f}s\n")
    print(table(runs, methods, epsilons, seeds))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))


def table(runs: list[dict], methods: list[str], epsilons: list[float], seeds: list[int]) -> str:
    def cell(method, eps):
        accs = [r["test_accuracy"] for r in runs if r["method"] == method and r["epsilon"] == eps]
        if not accs:
            return "—"
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        return f"{statistics.mean(accs):.3f} ± {sd:.3f}"

    head = "| method | " + " | ".join(f"ε = {e:g}" for e in epsilons) + " |"
    lines = [head, "|---|" + "---|" * len(epsilons)]
    for m in methods:
        if m == "nondp":
            lines.append(f"| {m} (ε = ∞) | " + " | ".join(cell(m, None) for _ in epsilons) + " |")
        else:
            lines.append(f"| {m} | " + " | ".join(cell(m, e) for e in epsilons) + " |")
    lines.append(f"\nmean ± std of test accuracy over seeds {seeds}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
