"""Membership inference attacks against non-private, DP-SGD and DP-Flat (paper mode) models on the
built-in task (issue 6): AUC, TPR at 0.1% / 1% FPR of every attack that applies, and ε_LB per
estimator at the gate's per-test level α/K (K = attacks × estimators), plus LiRA with per-example
vs global variances on the non-private model.

Each model is trained from its example config (examples/train-nondp.toml, train-dpsgd.toml,
train-dpflat-paper.toml) with smaller data (``--n-train``, ``--m`` canaries) by
``dp_audit.trainers.base.train_run``, then audited by ``dp_audit.audit.run_audit`` with
``attacks = ["all"]`` and ``--refs`` reference models trained by the same trainer and config
(``dp_audit.reference``). Prints Markdown tables; ``--write-docs`` puts them into docs/attacks.md
between the ``<!-- attack-table -->`` markers; ``--json`` saves every number.

Default size (~12 min on 2 shared cores): 1 000 private examples, 500 rare-token canaries,
8 reference models per target. Usage:
  python benchmarks/attack_table.py [--refs 8] [--n-train 1000] [--m 500] [--write-docs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"nondp": "train-nondp.toml", "dpsgd": "train-dpsgd.toml", "dpflat-paper": "train-dpflat-paper.toml"}
LABELS = {"nondp": "non-private", "dpsgd": "DP-SGD", "dpflat-paper": "DP-Flat (paper)"}
BEGIN, END = "<!-- attack-table -->", "<!-- /attack-table -->"


def merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def model_config(name: str, args) -> dict:
    data = tomllib.loads((ROOT / "examples" / MODELS[name]).read_text())
    over = {"data": {"n_train": args.n_train}, "canaries": {"m": args.m},
            "model": {"cache_dir": str(args.cache)}, "train": {"progress": False}}
    if args.repeat:
        over["canaries"]["repeat"] = args.repeat
    if name == "nondp" and args.nondp_epochs:
        over["train"]["epochs"] = args.nondp_epochs
    return merge(data, over)


def lira_variants(run_dir: Path) -> list[dict]:
    """LiRA online/offline with per-example vs global variances, from the cached signals."""
    import numpy as np

    from dp_audit.attacks.base import make_attack
    from dp_audit.attacks.metrics import attack_metrics
    from dp_audit.attacks.signals import ReferenceSignals, Signals
    from dp_audit.canaries import read_canaries

    target = Signals.load(run_dir / "signals" / "target.npz")
    ref = ReferenceSignals.load_files(sorted((run_dir / "references").glob("ref-*.npz")))
    member = np.array([c.member for c in read_canaries(run_dir / "canaries.jsonl")])
    rows = []
    for name in ("lira-online", "lira-offline"):
        for gv in (True, False):
            s = make_attack(name, global_variance=gv).fit(ref).score_samples(target)
            r = attack_metrics(name, s, member, scores_file="-", rng=np.random.default_rng(0), n_bootstrap=0)
            rows.append({"attack": name, "variance": "global" if gv else "per-example", "auc": r.auc,
                         "tpr": r.tpr_at_fpr})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--refs", type=int, default=8, help="reference models per target")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--m", type=int, default=500, help="canaries")
    ap.add_argument("--repeat", type=int, default=0, help="insert each member canary this many times (0: example's)")
    ap.add_argument("--nondp-epochs", type=int, default=0, help="override the non-private epochs (0: example's)")
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-bench-cache")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write-docs", action="store_true", help="write the tables into docs/attacks.md")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig, run_config_from_dict
    from dp_audit.trainers.base import train_run

    out_root = args.out or Path(tempfile.mkdtemp(prefix="dp-audit-attack-table-"))
    audit_cfg = AuditConfig(attacks=("all",), reference_models=args.refs, formats=())
    results, t_start, reused, reused_refs = {}, time.time(), [], 0
    for name in args.models.split(","):
        t0 = time.time()
        run_dir = out_root / name
        if not (run_dir / "manifest.json").is_file():
            train_run(run_config_from_dict(model_config(name, args)), run_dir, progress=False, overwrite=True)
        else:
            reused.append(name)
        reused_refs += len(list((run_dir / "references").glob("ref-*.npz"))) if (run_dir / "references").is_dir() else 0
        t1 = time.time()
        audit = run_audit(target_from_run(run_dir), audit_cfg, progress=False, render=False)
        results[name] = {"audit": {k: audit[k] for k in ("attacks", "estimates", "verdict", "claim", "references")},
                         "train_s": t1 - t0, "audit_s": time.time() - t1,
                         "lira_variants": lira_variants(run_dir) if name == "nondp" else None}
        print(f"{name}: trained in {t1 - t0:.0f}s, audited ({args.refs} reference models) in "
              f"{time.time() - t1:.0f}s", flush=True)
    total = time.time() - t_start
    note = (f"; this invocation reused the trained runs {', '.join(reused)} and {reused_refs} reference models from "
            f"{out_root}: the time covers only what it recomputed" if reused or reused_refs else "")
    text = tables(results, args, total, note)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1, default=str))
    if args.write_docs:
        write_docs(ROOT / "docs" / "attacks.md", text)


def _f(x) -> str:
    return "∞" if x in ("inf", float("inf")) else f"{x:.3f}"


def tables(results: dict, args, total: float, note: str = "") -> str:
    flags = f" --models {args.models}" if args.models != ",".join(MODELS) else ""
    flags += f" --repeat {args.repeat}" if args.repeat else ""
    lines = [f"`python benchmarks/attack_table.py --refs {args.refs} --n-train {args.n_train} --m {args.m}{flags}` "
             f"({total / 60:.1f} min on 2 shared cores{note}). m = {args.m} rare-token canaries (≈ {args.m // 2} "
             f"non-members, so the smallest resolvable FPR is ≈ {2 / args.m:.2%}: TPR@0.1% is the TPR at "
             f"zero false positives), {args.refs} reference models per target trained with the target's "
             "trainer and config; ε_LB at the gate's per-test α/K (α = 0.05).", "",
             "| model | claimed ε | attack | AUC | TPR@0.1% | TPR@1% | ε_LB steinke | ε_LB fdp | ε_LB exposure |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a = r["audit"]
        est = {(e["attack"], e["method"]): e["epsilon_lb"] for e in a["estimates"]}
        claim = a["claim"]["epsilon"]
        for att in a["attacks"]:
            t = att["tpr_at_fpr"]
            lines.append(f"| {LABELS[name]} | {_f(claim)} | {att['name']} | {att['auc']:.3f} | {t['0.001']:.3f} | "
                         f"{t['0.01']:.3f} | {_f(est.get((att['name'], 'steinke'), float('nan')))} | "
                         f"{_f(est.get((att['name'], 'fdp'), float('nan')))} | "
                         f"{_f(est[(att['name'], 'exposure')]) if (att['name'], 'exposure') in est else '—'} |")
    lines += ["", "| model | K tests | α per test | largest ε_LB | verdict |", "|---|---|---|---|---|"]
    for name, r in results.items():
        v = r["audit"]["verdict"]
        lines.append(f"| {LABELS[name]} | {v['n_tests']} | {v['alpha_per_test']:.3g} | {v['epsilon_lb_max']:.3f} "
                     f"({v['best_method']} on {v['best_attack']}) | {v['status']} |")
    nd = results.get("nondp", {}).get("lira_variants")
    if nd:
        lines += ["", "LiRA on the non-private model, global vs per-example variances (same signals):", "",
                  "| attack | variance | AUC | TPR@0.1% | TPR@1% |", "|---|---|---|---|---|"]
        for row in nd:
            lines.append(f"| {row['attack']} | {row['variance']} | {row['auc']:.3f} | {row['tpr']['0.001']:.3f} | "
                         f"{row['tpr']['0.01']:.3f} |")
    return "\n".join(lines)


def write_docs(path: Path, text: str) -> None:
    from dp_audit.io import atomic_write_text

    doc = path.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: markers {BEGIN} / {END} not found")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(path, f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"wrote the tables into {path}")


if __name__ == "__main__":
    main()
