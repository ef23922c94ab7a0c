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

MiniLM on the English task (issue 14; docs/trainers.md "MiniLM on the English task"):
  --backbone minilm --task english --tuning head --max-length 24 --epochs 5 --lr 0.05 --clip 1
  (non-private, DP-SGD and DP-ZO tune the classification head; the frozen encoder's outputs are
  computed once for the whole grid, trainers/feature_cache.py). DP-Flat always tunes a prefix
  (--dpflat-* options), whose every step runs the whole encoder: the expensive rows.

The DP-Flat question on MiniLM (prefix on the top layer, the frozen bottom cached; docs/trainers.md
"Utility on MiniLM + the English task", the prefix table):
  --backbone minilm --task english --tuning prefix --max-length 24 --virtual-tokens 10
  --prefix-layers 1 --epochs 10 --lr 0.05 --clip 1 --nondp-lr 0.01 --ref-epochs 3 --sparse-k 0
  --dpflat-train-head --private-awp dpsat --methods nondp,dpsgd,dpflat-paper,dpflat-private

Full fine-tuning of MiniLM (DP-SGD with book-keeping clipping, trainers/dpsgd_bk.py):
  --backbone minilm --task english --tuning full --max-length 24 --grad-sample-mode bk
  --methods nondp,dpsgd,dpzo-gaussian,dpzo-laplace,dpflat-bb-paper,dpflat-bb-private
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
# black-box DP-Flat (cross-model flattening on DP-ZO, any tuning): opt-in, not in the default grid
BLACKBOX = ("dpflat-bb-paper", "dpflat-bb-private")


def sections(method: str, args) -> dict:
    dp = {"train": {"epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer},
          "privacy": {"max_grad_norm": args.clip}}
    dpsgd = {**dp, "privacy": {**dp["privacy"], "grad_sample_mode": args.grad_sample_mode}}
    flat = {"awp": True, "sparse": args.sparse_k > 0, "distill": True, "sparse_k": args.sparse_k, "distill_epochs": args.ref_epochs,
            "train_head": args.dpflat_train_head, "sparse_reference_epochs": args.ref_epochs}
    flat_model = {"model": {"tuning": "prefix", "prefix_layers": args.prefix_layers},
                  "data": {"n_train": args.dpflat_n_train or args.n_train}}
    flat_train = {"train": {"epochs": args.dpflat_epochs or args.epochs, "lr": args.dpflat_lr or args.lr,
                            "optimizer": args.optimizer}}
    zo = {"train": {"epochs": args.zo_epochs, "lr": args.zo_lr, "optimizer": "sgd"},
          "dpzo": {"clip": args.zo_clip, "perturbation_scale": 1e-3}}
    bb = {"blackbox": True, "awp": False, "sparse": False, "distill": True, "distill_epochs": args.ref_epochs,
          "distill_lambda": args.bb_lambda}
    return {
        "nondp": {"trainer": "nondp", "train": {"epochs": args.nondp_epochs or args.epochs, "lr": args.nondp_lr}},
        "dpsgd": {"trainer": "dpsgd", **dpsgd},
        "dpflat-paper": {"trainer": "dpflat", **dp, **flat_model, **flat_train,
                         "dpflat": {**flat, "awp_mode": "paper", "sparse_mode": "paper", "distill_mode": "paper"}},
        "dpflat-private": {"trainer": "dpflat", **dp, **flat_model, **flat_train,
                           "dpflat": {**flat, "awp_mode": args.private_awp, "sparse_mode": "public",
                                      "distill_mode": "public"}},
        "dpzo-gaussian": {"trainer": "dpzo", **zo, "dpzo": {**zo["dpzo"], "noise": "gaussian"}},
        "dpzo-laplace": {"trainer": "dpzo", **zo, "dpzo": {**zo["dpzo"], "noise": "laplace"}},
        # the teacher θ_np: non-private MeZO for --ref-epochs epochs on the private (paper) or public split
        "dpflat-bb-paper": {"trainer": "dpflat", **zo, "dpzo": {**zo["dpzo"], "noise": "gaussian"},
                            "dpflat": {**bb, "distill_mode": "paper"}},
        "dpflat-bb-private": {"trainer": "dpflat", **zo, "dpzo": {**zo["dpzo"], "noise": "gaussian"},
                              "dpflat": {**bb, "distill_mode": "public"}},
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
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated, of {', '.join(METHODS + BLACKBOX)} (default: the first six)")
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
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--backbone", default="tiny", choices=("tiny", "minilm"))
    ap.add_argument("--task", default="pseudo", choices=("pseudo", "english"))
    ap.add_argument("--tuning", default="prefix",
                    help="tuning of nondp, dpsgd, dpzo and black-box DP-Flat (white-box DP-Flat: always prefix)")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dpflat-train-head", action="store_true", help="DP-Flat also trains the head")
    ap.add_argument("--dpflat-n-train", type=int, default=0, help="DP-Flat's private examples (0: --n-train)")
    ap.add_argument("--dpflat-epochs", type=int, default=0)
    ap.add_argument("--dpflat-lr", type=float, default=0.0)
    ap.add_argument("--bb-lambda", type=float, default=0.01, help="black-box DP-Flat: distillation weight λ")
    ap.add_argument("--private-awp", default="per-example", choices=("per-example", "dpsat"))
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"),
                    help="optimiser of DP-SGD and DP-Flat (non-private: AdamW)")
    ap.add_argument("--nondp-epochs", type=int, default=0, help="epochs of the non-private run (0: --epochs)")
    ap.add_argument("--prefix-layers", type=int, default=0,
                    help="prefix on the top k encoder layers, the frozen bottom cached (0: every layer)")
    ap.add_argument("--sparse-k", type=int, default=1, help="DP-Flat: prefix layers removed by the selection")
    ap.add_argument("--grad-sample-mode", default="auto", choices=("auto", "hooks", "ghost", "bk"),
                    help="DP-SGD's per-sample gradients (bk: book-keeping, the affordable one for full fine-tuning)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import dp_audit.trainers.registry  # noqa: F401
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import TRAINERS, prepare
    from dp_audit.trainers.modeling import accuracy, build_classifier

    base = {"model": {"tuning": args.tuning, "num_virtual_tokens": args.virtual_tokens, "cache_dir": str(args.cache),
                      "backbone": args.backbone,
                      "prefix_layers": args.prefix_layers if args.tuning == "prefix" else 0},
            "data": {"n_train": args.n_train, "n_test": args.n_test, "task": args.task, "max_length": args.max_length},
            "canaries": {"m": 0}, "train": {"batch_size": args.batch_size, "progress": False}}
    seeds = [int(s) for s in args.seeds.split(",")]
    epsilons = [float(e) for e in args.eps.split(",")]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS + BLACKBOX))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}")
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
                if args.json:  # after every run: a long grid stopped midway keeps what it measured
                    save(args, runs)
    print(f"\ntotal {time.time() - t_start:.0f}s\n")
    print(table(runs, methods, epsilons, seeds))
    if args.json:
        save(args, runs)


def save(args, runs: list[dict]) -> None:
    from dp_audit.io import atomic_write_json

    atomic_write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs})


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
