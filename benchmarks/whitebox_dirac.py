"""White-box one-run audit with Dirac gradient canaries vs the black-box one-run audit, on the
same DP-SGD run (docs/whitebox.md, "Dirac gradient canaries").

Trains DP-SGD on the built-in task (small BERT, full fine-tuning, plain SGD) at a claimed ε = 4,
δ = 1e-5 (PRV accountant) with m = 10⁵ Dirac gradient canaries (``canaries.gradient``; the position
table is enlarged with ``model.max_position_embeddings`` so that rows >= data.max_length hold them)
and 1000 mislabelled text canaries, runs ``run_audit`` (LOSS black-box + whitebox-dirac) and prints:

- each attack's ε_LB alone at α = 0.05 (f-DP with the (ε, δ) null, and Steinke et al.), as one-run
  papers report a single attack; the f-DP bound under the μ-GDP null is printed too but labelled:
  it refutes μ-GDP claims only (docs/estimators.md);
- the gate's verdict over both attacks (α split between them);
- the white-box ε_LB vs m on the first 10³, 10⁴, 10⁵ Dirac canaries, next to the ideal: the same
  estimators on exact Gaussian scores of the mechanism at the same (q, T, σ) and m.

    .venv/bin/python benchmarks/whitebox_dirac.py [--batch-size 2000 --epochs 4 --seeds 1]

``--batch-size`` ≥ the private set size gives q = 1 (full-batch DP-GD: strongest audit per ε).

``--trainer dpflat --dpflat-awp paper|dpsat|per-example`` runs white-box DP-Flat instead (prefix
tuning, AWP only; the canaries on the audit parameter of trainers/dpflat_dirac.py; default there
m = 10⁴, since each step holds B × m zero per-sample rows for that parameter):

    .venv/bin/python benchmarks/whitebox_dirac.py --trainer dpflat --dpflat-awp paper --m-dirac 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.simplefilter("ignore")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


HIDDEN, MAX_LENGTH = 32, 32


def positions_for(m_dirac: int) -> int:
    """A position table with room for m Dirac coordinates past data.max_length (0: the default)."""
    rows = MAX_LENGTH + -(-m_dirac // HIDDEN)
    return 0 if rows <= max(64, MAX_LENGTH + 8) else rows


def config(*, seed: int, batch_size: int, epochs: int, m: int, cache: Path, bug: str = "none",
           m_dirac: int | None = None, trainer: str = "dpsgd", dpflat_awp: str = "paper"):
    from dp_audit.config import run_config_from_dict

    m_dirac = m if m_dirac is None else m_dirac
    flat = trainer == "dpflat"
    extra = ({"dpflat": {"awp": True, "awp_mode": dpflat_awp, "sparse": False, "distill": False}} if flat else {})
    return run_config_from_dict({
        "trainer": trainer, **extra,
        "data": {"n_train": 500, "n_public": 2000, "max_length": MAX_LENGTH, "vocab_size": 600},
        "model": {"hidden_size": HIDDEN, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                  "pretrain_epochs": 3, "cache_dir": str(cache),
                  **({"tuning": "prefix", "num_virtual_tokens": 10} if flat
                     else {"max_position_embeddings": positions_for(m_dirac)})},
        "canaries": {"m": m, "gradient": m_dirac, "seed": 100 + seed},
        "train": {"optimizer": "sgd", "lr": 0.5, "batch_size": batch_size, "epochs": epochs, "seed": seed,
                  "progress": False},
        "privacy": {"epsilon": 4.0, "delta": 1e-5, "accountant": "prv", "max_grad_norm": 1.0, "inject_bug": bug},
    })


def alone(scores, member, *, delta: float) -> dict[str, float]:
    from dp_audit.estimate import estimate_epsilon

    out = {}
    for label, method, null in (("fdp", "fdp", "eps-delta"), ("steinke", "steinke", "eps-delta"),
                                ("fdp-gdp-null*", "fdp", "gdp")):
        out[label] = estimate_epsilon(scores, member, method=method, alpha=0.05, delta=delta, fdp_null=null).epsilon_lb
    return out


def ideal(*, q: float, steps: int, sigma: float, m: int, delta: float, seed: int) -> dict[str, float]:
    """The same estimators on exact simulated Dirac scores K + σ√T·Z (K ~ Bin(T, q) for members)."""
    rng = np.random.default_rng([seed, 7])
    member = rng.random(m) < 0.5
    scores = rng.binomial(steps, q, size=m) * member + sigma * np.sqrt(steps) * rng.standard_normal(m)
    return alone(scores, member, delta=delta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2000, help=">= private set size: q = 1")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--m", type=int, default=1000, help="text canaries (black-box)")
    ap.add_argument("--m-dirac", type=int, default=100_000,
                    help="Dirac canaries (white-box); ε_LB is also printed on the first 1000, 10000, ... of them")
    ap.add_argument("--bug", default="none")
    ap.add_argument("--trainer", default="dpsgd", choices=("dpsgd", "dpflat"))
    ap.add_argument("--dpflat-awp", default="paper", choices=("paper", "dpsat", "per-example"))
    ap.add_argument("--workdir", default="")
    args = ap.parse_args(argv)
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig
    from dp_audit.io import load_scores, read_json
    from dp_audit.trainers.base import train_run

    work = Path(args.workdir or tempfile.mkdtemp(prefix="whitebox-dirac-"))
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        cfg = config(seed=seed, batch_size=args.batch_size, epochs=args.epochs, m=args.m, cache=work / ".cache",
                     bug=args.bug, m_dirac=args.m_dirac, trainer=args.trainer, dpflat_awp=args.dpflat_awp)
        run = train_run(cfg, work / f"run-{seed}", progress=False, overwrite=True)
        t_train = time.perf_counter() - t0
        audit = run_audit(target_from_run(run), AuditConfig(attacks=("loss",), formats=()), progress=False,
                          render=False)
        dp = read_json(run / "manifest.json")["notes"]["dp"]
        delta = float(audit["claim"]["delta"])
        print(f"seed {seed}: claimed ε = {float(audit['claim']['epsilon']):.3f} (δ = {delta:g}, PRV), "
              f"σ = {dp['noise_multiplier']:.3f}, q = {dp['sample_rate']:.3f}, T = {dp['steps']}, "
              f"m = {args.m_dirac} Dirac + {args.m} text canaries, bug = {args.bug}, trainer = {args.trainer}"
              + (f" (AWP {args.dpflat_awp})" if args.trainer == "dpflat" else "") + f"; train {t_train:.0f} s")
        for a in audit["attacks"]:
            scores, member = load_scores(run / a["scores_file"])
            b = alone(scores, member, delta=delta)
            print(f"  {a['name']:<15} {a['threat_model']:<10} AUC {a['auc']:.3f}  ε_LB alone (α=0.05): "
                  + "  ".join(f"{k} {v:.2f}" for k, v in b.items()))
        for e in audit["estimates"]:
            if e["attack"] != "ledger":
                print(f"  gate: {e['method']} on {e['attack']}: ε_LB {e['epsilon_lb']:.2f} at α = {e['alpha']:.3g}")
        print(f"  gate verdict: {audit['verdict']['status']} (largest counted ε_LB "
              f"{audit['verdict']['epsilon_lb_max']:.2f}, {audit['verdict']['best_method']} on "
              f"{audit['verdict']['best_attack']})")
        dirac_file = next(a["scores_file"] for a in audit["attacks"] if a["name"] == "whitebox-dirac")
        scores, member = load_scores(run / dirac_file)
        print("  white-box ε_LB vs m (the first m Dirac canaries of this run: a subset is a valid one-run "
              "audit, membership is independent of the index), α = 0.05 alone:")
        m_list = [m for m in (1000, 10_000, 100_000) if m < scores.size] + [scores.size]
        for m in m_list:
            b = alone(scores[:m], member[:m], delta=delta)
            ide = ideal(q=dp["sample_rate"], steps=dp["steps"], sigma=dp["noise_multiplier"], m=m, delta=delta,
                        seed=seed)
            print(f"    m = {m:>6}: " + "  ".join(f"{k} {v:.2f}" for k, v in b.items())
                  + "   | ideal (exact Gaussian scores, same q, T, σ): "
                  + "  ".join(f"{k} {v:.2f}" for k, v in ide.items()))
    print("* fdp-gdp-null: f-DP test of the μ-GDP curve; refutes μ-GDP claims only, not (ε, δ)-DP (not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
