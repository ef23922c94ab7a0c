"""The shape of DP-Flat's Figure 1 on the built-in task (issue 7): loss at w + η·d, d ~ N(0, I)
over the prefix, against η, for non-private, DP-SGD and DP-Flat prefix tuning, several seeds.

Models: examples/train-nondp.toml, train-dpsgd.toml and train-dpflat-paper.toml as bases, all
switched to the same prefix tuning (``--virtual-tokens`` virtual tokens, no reparametrisation)
of the same cached backbone, no canaries, ``--epochs`` epochs, trained by
``dp_audit.trainers.base.train_run``. The private runs use the prefix settings of
benchmarks/trainer_utility.py (lr 0.1, C = 0.1, ε = 3, δ = 1e-5); the non-private one lr 1e-2.

Probe: two sets of trained weights, (a) the prefix embedding alone (η up to ``--eta-max``) and
(b) the prefix with the trained classification head (PEFT's ``modules_to_save`` copy; η up to
``--eta-max-head``), K = ``--directions`` Gaussian directions shared by every model (same seed;
the weights have the same shapes), every example evaluated at every η (``budget=None``), on
``--eval-examples`` private training examples (members) and on the dev split. The figure shows, per split, the mean over seeds of each method's curve with a band
of ±1 standard deviation across seeds (thin lines: single seeds). The table reports the loss
increase L(η) − L(0), averaged over ±η, mean ± sd over seeds.

Writes ``--figure`` (PNG) and the table between the ``<!-- figure1-table -->`` markers of
``--doc``; ``--json`` keeps every curve. Default size: ~5 min on 2 cores (one thread).
Usage: python benchmarks/landscape_figure1.py [--seeds 0,1,2] [--epochs 6] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"nondp": "examples/train-nondp.toml", "dpsgd": "examples/train-dpsgd.toml",
           "dpflat": "examples/train-dpflat-paper.toml"}
LABELS = {"nondp": "non-private", "dpsgd": "DP-SGD (ε = 3)", "dpflat": "DP-Flat, paper mode (ε = 3 claimed)"}
COLORS = {"nondp": "#000000", "dpsgd": "#D55E00", "dpflat": "#0072B2"}
MARK = ("<!-- figure1-table -->", "<!-- /figure1-table -->")


def run_config(method: str, seed: int, args):
    from dp_audit.config import load_toml, RunConfig, run_config_from_dict

    base = load_toml(ROOT / METHODS[method], RunConfig).to_dict()
    base["name"] = f"{method}-s{seed}"
    base["data"].update({"n_train": args.n_train})
    base["model"].update({"tuning": "prefix", "num_virtual_tokens": args.virtual_tokens, "cache_dir": str(args.cache)})
    base["canaries"].update({"m": 0})
    base["train"].update({"epochs": args.epochs, "seed": seed, "progress": False, "batch_size": 64})
    if method == "nondp":
        base["train"]["lr"] = args.nondp_lr
    else:
        base["train"]["lr"] = args.lr
        base["privacy"].update({"epsilon": args.epsilon, "delta": 1e-5, "max_grad_norm": args.clip})
    if method == "dpflat":
        base["dpflat"].update({"distill_epochs": args.ref_epochs})
    return run_config_from_dict(base)


def probe(run_dir: Path, cfg, args) -> dict:
    import torch

    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.landscapes.evaluation import ClassifierEvaluator
    from dp_audit.landscapes.params import select_parameters
    from dp_audit.landscapes.surface import loss_curves
    from dp_audit.trainers.data import make_task
    from dp_audit.trainers.modeling import encode

    model, tokenizer, _ = load_hf_model(run_dir / "model", base=run_dir / "base_model",
                                        tokenizer_path=run_dir / "tokenizer")
    task = make_task(cfg.data)
    rng = np.random.default_rng(12345)  # the same examples for every model
    idx = np.sort(rng.choice(len(task.train), size=min(args.eval_examples, len(task.train)), replace=False))
    train = encode(tokenizer, [task.train.texts[i] for i in idx], [task.train.labels[i] for i in idx],
                   max_length=cfg.data.max_length)
    dev = encode(tokenizer, task.dev.texts[:args.eval_examples], task.dev.labels[:args.eval_examples],
                 max_length=cfg.data.max_length)
    keep = ("input_ids", "attention_mask", "token_type_ids", "labels")
    evs = {name: ClassifierEvaluator([{k: b[k] for k in keep}], batch_size=250) for name, b in
           (("train", train), ("dev", dev))}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {"test_accuracy": metrics["test_accuracy"], "sets": {}}
    for name, (include, eta_max) in probe_sets(args).items():
        params = select_parameters(model, trainable_only=False, include=include)
        etas = tuple(float(x) for x in np.round(np.linspace(-eta_max, eta_max, args.n_eta), 10))
        curves = loss_curves(model, evs, params, etas=etas, n_directions=args.directions, kind="gaussian",
                             generator=torch.Generator().manual_seed(args.direction_seed), budget=None,
                             progress=False)
        norm = float(torch.sqrt(sum((p.detach().double() ** 2).sum() for _, p in params)))
        out["sets"][name] = {
            "etas": list(etas), "norm": norm, "n_weights": sum(int(p.numel()) for _, p in params),
            "curves": {s: {"loss_mean": list(c.loss_mean), "loss_se": list(c.loss_se),
                           "acc_mean": list(c.acc_mean or [])} for s, c in curves.items()}}
    return out


def probe_sets(args) -> dict:
    """Which trained weights move: the prefix alone, and the prefix with the trained head (PEFT's
    ``modules_to_save`` copy; the frozen original head is not moved)."""
    return {"prefix": (["prompt_encoder"], args.eta_max),
            "prefix+head": (["prompt_encoder", "modules_to_save"], args.eta_max_head)}


def increase(curve: dict, etas: list[float], eta: float) -> float:
    """L(η) − L(0) averaged over ±η."""
    loss = curve["loss_mean"]
    base = loss[etas.index(0.0)]
    vals = [loss[i] - base for i, e in enumerate(etas) if np.isclose(abs(e), eta)]
    return float(np.mean(vals))


def _ms(vals, spec=".3f") -> str:
    a = np.asarray(vals, dtype=float)
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return f"{float(a.mean()):{spec}} ± {sd:{spec}}"


def _grid(eta: float, etas: list[float]) -> float:
    """The grid value of |η| closest to ``eta``."""
    return float(min((abs(e) for e in etas if e != 0), key=lambda e: abs(e - eta)))


def table(results: dict, args) -> str:
    sets = probe_sets(args)
    first = next(iter(next(iter(results.values())).values()))["sets"]
    cols = [(name, split, _grid(eta_max / 2, first[name]["etas"])) for name, (_, eta_max) in sets.items()
            for split in ("train", "dev")]
    cols += [(name, split, eta_max) for name, (_, eta_max) in sets.items() for split in ("train", "dev")]
    cols.sort(key=lambda c: (list(sets).index(c[0]), c[2], c[1] != "train"))
    head = ("| method | test acc. | train L(0) | dev L(0) | ‖prefix‖ | "
            + " | ".join(f"{n}: {s} ΔL(±{e:g})" for n, s, e in cols) + " |")
    lines = [head, "|---|---|---|---|---|" + "---|" * len(cols)]
    for m, runs in results.items():
        rs = list(runs.values())
        p0 = [r["sets"]["prefix"] for r in rs]
        cells = [_ms([r["test_accuracy"] for r in rs]),
                 _ms([q["curves"]["train"]["loss_mean"][q["etas"].index(0.0)] for q in p0]),
                 _ms([q["curves"]["dev"]["loss_mean"][q["etas"].index(0.0)] for q in p0]),
                 _ms([q["norm"] for q in p0], ".1f")]
        cells += [_ms([increase(r["sets"][n]["curves"][s], r["sets"][n]["etas"], e) for r in rs]) for n, s, e in cols]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    n_w = {n: next(iter(next(iter(results.values())).values()))["sets"][n]["n_weights"] for n in sets}
    lines.append(f"\nmean ± sd over seeds {sorted(next(iter(results.values())))}. ΔL(±η) = L(w + η·d) − L(w), "
                 f"averaged over +η and −η and over {args.directions} Gaussian directions d ~ N(0, I) (the same "
                 "directions for every model); L = mean cross-entropy (nats) on "
                 f"{args.eval_examples} training examples (members) or {args.eval_examples} dev examples, every "
                 f"example at every η. prefix: {n_w['prefix']} weights; prefix+head: {n_w['prefix+head']} "
                 "(the trained classification head as well); ‖prefix‖: Frobenius norm of the trained prefix.")
    return "\n".join(lines)


def figure(results: dict, path: Path, args) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = list(probe_sets(args))
    fig = Figure(figsize=(9.0, 3.2 * len(sets) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(sets), 2, squeeze=False))
    for row, name in zip(axes, sets):
        for ax, split in zip(row, ("train", "dev")):
            for m, runs in results.items():
                rs = list(runs.values())
                etas = np.asarray(rs[0]["sets"][name]["etas"])
                ys = np.asarray([r["sets"][name]["curves"][split]["loss_mean"] for r in rs])
                for y in ys:
                    ax.plot(etas, y, color=COLORS[m], linewidth=0.6, alpha=0.35)
                mean = ys.mean(axis=0)
                sd = ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
                ax.plot(etas, mean, color=COLORS[m], linewidth=2, marker=".", label=f"{LABELS[m]} ({len(rs)} seeds)")
                ax.fill_between(etas, mean - sd, mean + sd, color=COLORS[m], alpha=0.15, linewidth=0)
            what = {"train": "training examples (members)", "dev": "dev examples"}[split]
            ax.set_title(f"{what}; d on the {name}", loc="left", fontsize=9)
            ax.set_xlabel(f"η  (loss at w + η·d, d ~ N(0, I) on the {name})")
            ax.set_ylabel("mean cross-entropy (nats)")
            ax.grid(True, color="#dddddd", linewidth=0.6)
    axes[0][0].legend(loc="best", frameon=False, fontsize=8)
    fig.suptitle("Loss along random Gaussian directions around prefix-tuned models (band: ±1 sd over seeds)",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})


def write_doc(doc: Path, text: str) -> None:
    src = doc.read_text(encoding="utf-8")
    if MARK[0] not in src or MARK[1] not in src:
        raise SystemExit(f"{doc}: markers {MARK} not found")
    pat = re.compile(re.escape(MARK[0]) + r".*?" + re.escape(MARK[1]), re.S)
    from dp_audit.io import atomic_write_text

    atomic_write_text(doc, pat.sub(lambda _: f"{MARK[0]}\n{text}\n{MARK[1]}", src))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--nondp-lr", type=float, default=1e-2)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--ref-epochs", type=int, default=3)
    ap.add_argument("--virtual-tokens", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--directions", type=int, default=8)
    ap.add_argument("--direction-seed", type=int, default=0)
    ap.add_argument("--eta-max", type=float, default=10.0, help="largest |η| for the prefix alone")
    ap.add_argument("--eta-max-head", type=float, default=1.0, help="largest |η| for prefix + head")
    ap.add_argument("--n-eta", type=int, default=11)
    ap.add_argument("--figure", type=Path, default=ROOT / "docs/images/landscape-figure1.png")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs/landscapes.md")
    ap.add_argument("--no-doc", action="store_true", help="do not edit --doc")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="where the run directories go (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="keep run directories already in --work (same config)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from dp_audit.hf_compat import quiet_transformers
    from dp_audit.trainers.base import train_run

    quiet_transformers()
    work = args.work or Path(tempfile.mkdtemp(prefix="landscape-figure1-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    t_start = time.time()
    t_train = t_probe = 0.0
    for method in args.methods.split(","):
        results[method] = {}
        for seed in seeds:
            cfg = run_config(method, seed, args)
            t0 = time.time()
            run = work / cfg.name
            if not (args.reuse and (run / "manifest.json").is_file()):
                run = train_run(cfg, run, progress=False, overwrite=True)
            t1 = time.time()
            t_train += t1 - t0
            res = probe(run, cfg, args)
            t_probe += time.time() - t1
            results[method][seed] = res
            parts = []
            for name, q in res["sets"].items():
                tr, dv = q["curves"]["train"]["loss_mean"], q["curves"]["dev"]["loss_mean"]
                parts.append(f"{name} |w| {q['norm']:.1f} train L {tr[len(tr) // 2]:.3f}->{tr[0]:.3f}/{tr[-1]:.3f} "
                             f"dev L {dv[len(dv) // 2]:.3f}->{dv[0]:.3f}/{dv[-1]:.3f}")
            print(f"{method:>7} seed {seed}: test acc {res['test_accuracy']:.3f}; " + "; ".join(parts)
                  + f"  (train {t1 - t0:.0f}s, probe {time.time() - t1:.0f}s)", flush=True)
    total = time.time() - t_start
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    text = table(results, args) + (f"\n\n({total:.0f} s on 2 shared cores: training {t_train:.0f} s"
                                   + (" (run directories reused)" if args.reuse else "") + f", probing {t_probe:.0f} s.)")
    print("\n" + text)
    figure(results, args.figure, args)
    print(f"wrote {args.figure}")
    if not args.no_doc:
        write_doc(args.doc, text)
        print(f"updated {args.doc}")


if __name__ == "__main__":
    main()
