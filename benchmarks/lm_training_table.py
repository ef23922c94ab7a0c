"""The training table of docs/language-models.md (issue 16): for each trainer on the built-in
generation task with the tiny GPT-2 — test perplexity, the members' and non-members' mean exposure
(K candidates), and the best one-run ε_LB of ``dp-audit run`` (LOSS + exposure) against the
claimed ε (per example; the canaries are inserted 20 times, so the bound goes through 20-fold group
privacy and the group's own ε_LB is printed too). One run per row, fixed seeds, reproducible noise (a measurement, not a deployment).

Usage: python benchmarks/lm_training_table.py [--out /tmp/lm-table] [--rows nondp,dpsgd,dpzo,dpflat-paper,dpflat-private]
The published anchor (Panda et al. 2025: ε_LB ≈ 1 black-box at ε = 4, canaries inserted once):
  python benchmarks/lm_training_table.py --rows nondp-once,dpsgd4-once
and with designed (new-token) secrets:
  python benchmarks/lm_training_table.py --rows nondp-once-new,dpsgd4-once-new,dpsgd4-once-new1000
Prefix tuning on 5 000 private texts, where DP prefix tuning learns:
  python benchmarks/lm_training_table.py --rows nondp-prefix-5k,dpsgd-prefix-5k,dpflat-paper-5k,dpflat-private-5k
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np


def merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


BASE = {
    "data": {"task": "generation", "n_public": 400, "n_train": 100, "n_dev": 50, "n_test": 50, "max_length": 20,
             "vocab_size": 200},
    "model": {"kind": "causal-lm", "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
              "pretrain_epochs": 3},
    "canaries": {"kind": "secret", "m": 64, "repeat": 20, "candidates": 200},
    "train": {"epochs": 6, "batch_size": 32, "progress": False, "lr": 5e-3},
    "privacy": {"reproducible_noise": True, "epsilon": 1.0},
}
PREFIX = {"model": {"tuning": "prefix", "num_virtual_tokens": 10}, "train": {"lr": 5e-2}}
ROWS = {
    # canaries are inserted 20 times: the gate tests the claim's 20-fold group guarantee
    # (dp_audit.group_privacy), so a per-example claim of 0.05 (group ε 1) is what it can refute
    "nondp": {"trainer": "nondp", "privacy": {"claimed_epsilon": 0.05}},
    "dpsgd": {"trainer": "dpsgd"},
    "dpzo": {"trainer": "dpzo", "dpzo": {"steps": 2000}, "train": {"lr": 1e-3}},  # tuned 2026-12-03: ppl 89 -> 57
    "dpflat-paper": {"trainer": "dpflat", **PREFIX, "dpflat": {"distill_epochs": 2, "sparse_reference_epochs": 2}},
    "dpflat-private": {"trainer": "dpflat", **PREFIX,
                       "dpflat": {"awp_mode": "dpsat", "sparse_mode": "public", "distill_mode": "public",
                                  "distill_target": "outputs", "distill_epochs": 2, "sparse_reference_epochs": 2}},
}
# Panda et al. (ICLR 2025)'s setting, as near as the tiny model allows: each member canary inserted
# once (per-example claim, no group privacy), 500 canaries (half members), black-box one-run
# bounds, DP-SGD at ε = 4; the non-private run with the same canaries is the audit's ceiling.
ONCE = {"canaries": {"m": 500, "repeat": 1, "n_digits": 3, "candidates": 999}, "train": {"epochs": 100}}
ROWS.update({
    "nondp-once": merge(ONCE, {"trainer": "nondp", "privacy": {"claimed_epsilon": 4.0}}),
    "dpsgd4-once": merge(ONCE, {"trainer": "dpsgd", "privacy": {"epsilon": 4.0}}),
})
# A setting in which DP prefix tuning learns (2026-12-03): 50× the private data (5 000 texts), batch
# 256, 10 epochs (220 steps), lr 0.2, C = 0.1; with 100 texts DP-SGD on the prefix stayed at the
# pretrained model's perplexity for every lr/C/batch tried (docs/language-models.md)
LARGE = {"data": {"n_train": 5000}, "train": {"epochs": 10, "lr": 0.2, "batch_size": 256},
         "privacy": {"max_grad_norm": 0.1}}
ROWS.update({
    "nondp-prefix-5k": merge(merge(ROWS["nondp"], PREFIX), {"data": {"n_train": 5000}, "train": {"epochs": 3}}),
    "dpsgd-prefix-5k": merge(merge({"trainer": "dpsgd"}, PREFIX), LARGE),
    "dpflat-paper-5k": merge(ROWS["dpflat-paper"], LARGE),
    "dpflat-private-5k": merge(ROWS["dpflat-private"], LARGE),
})
# the same with designed secrets (Panda et al.'s best canaries): the symbols are tokens added to the
# vocabulary for the canaries (canaries.secret_alphabet = "new-tokens", docs/language-models.md
# "Designed secrets"), whose embedding rows no other text trains; 1000 symbols, so that each occurs
# in about 1.5 canaries (|R| = 1000^3)
NEW = {"canaries": {"secret_alphabet": "new-tokens", "alphabet_size": 1000}}
ROWS.update({
    "nondp-once-new": merge(ROWS["nondp-once"], NEW),
    "dpsgd4-once-new": merge(ROWS["dpsgd4-once"], NEW),
    # Panda et al.'s canary count: 1000 canaries, half members
    "dpsgd4-once-new1000": merge(ROWS["dpsgd4-once"], merge(NEW, {"canaries": {"m": 1000}})),
    # a smaller alphabet: each symbol in ~15 canaries (members and non-members share the trained rows)
    "dpsgd4-once-new100": merge(ROWS["dpsgd4-once"], {"canaries": {"secret_alphabet": "new-tokens",
                                                                   "alphabet_size": 100}}),
    "dpsgd4-once-new100-1000": merge(ROWS["dpsgd4-once"], {"canaries": {"secret_alphabet": "new-tokens",
                                                                        "alphabet_size": 100, "m": 1000}}),
})
DEFAULT_ROWS = ("nondp", "dpsgd", "dpzo", "dpflat-paper", "dpflat-private")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dp-audit-lm-table")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"rows: {', '.join(ROWS)}")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig, run_config_from_dict
    from dp_audit.trainers.base import train_run

    print("| run | claimed ε | test perplexity | members' exposure | non-members' | best per-example ε_LB (method, attack) | its group ε_LB (k = repeat) | gate |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.rows.split(","):
        cfg = run_config_from_dict(merge(merge(BASE, {"model": {"cache_dir": str(args.out / ".cache")}}), ROWS[name]))
        run = train_run(cfg, args.out / name, overwrite=True, progress=False)
        audit = run_audit(target_from_run(run), AuditConfig(attacks=("loss", "exposure"), formats=()),
                          progress=False, render=False)
        sc = np.load(run / "scores" / "exposure.npz", allow_pickle=False)
        mem = sc["member"]
        metrics = json.loads((run / "metrics.json").read_text())
        # empirical bounds only (the ledger's observed-mechanism ε is a cross-check, not an audit)
        bounds = [e for e in audit["estimates"] if e.get("is_bound") and e.get("attack") not in (None, "ledger")]
        best = max(bounds, key=lambda e: e["epsilon_lb"]) if bounds else None
        eps = audit["claim"]["epsilon"]
        eps = "∞" if isinstance(eps, str) or not math.isfinite(float(eps)) else f"{float(eps):.2f}"
        where = f"{best['epsilon_lb']:.3f} ({best['method']}, {best.get('attack')})" if best else "—"
        group = f"{best['details'].get('group_epsilon_lb', best['epsilon_lb']):.2f}" if best else "—"
        print(f"| {name} | {eps} | {metrics['test_perplexity']:.1f} | {sc['scores'][mem].mean():.2f} | "
              f"{sc['scores'][~mem].mean():.2f} | {where} | {group} | {audit['verdict']['status']} |", flush=True)


if __name__ == "__main__":
    main()
