"""Power of the white-box rare-token audit against known DP-SGD bugs (docs/whitebox.md).

Trains the tiny model of tests/test_gate_regressions.py (plain SGD, full fine-tuning, 300
rare-token canaries, claimed ε ≈ 1, δ = 1e-5) for each bug and for correct DP-SGD over several
seeds (training noise and canary membership both vary), and prints how often the one-run bound
exceeds the claim at α/K with K = 4 (the gate's {loss, whitebox-rare-token} × {steinke, fdp}).
It also prints the share of a canary's gradient norm that lies on its own embedding row, which
bounds what any row-based attack can see, and an exact simulation of Dirac gradient canaries
(Nasr et al. 2023) at the same (q, T, σ): what a trainer-side gradient canary would catch.

    .venv/bin/python benchmarks/bug_detection_power.py --seeds 5
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
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

from tests.conftest import merge  # noqa: E402
from tests.test_gate_regressions import BASE, C_CLIP, C_NOISE  # noqa: E402

CASES = [("none", C_NOISE), ("no-noise", C_NOISE), ("noise-multiplier-ignored", C_NOISE),
         ("accountant-rate-10x-smaller", C_NOISE), ("none", C_CLIP), ("no-clip", C_CLIP)]
K = 4
ALPHA = 0.05


def bounds(scores, member, delta):
    from dp_audit.estimate import estimate_epsilon

    return {m: estimate_epsilon(scores, member, method=m, alpha=ALPHA / K, delta=delta).epsilon_lb
            for m in ("steinke", "fdp")}


def train(cache: Path, out: Path, *, bug: str, c: float, seed: int) -> Path:
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import train_run

    cfg = run_config_from_dict(merge(BASE, {"model": {"cache_dir": str(cache)},
                                            "canaries": {"seed": 1000 + seed}, "train": {"seed": seed},
                                            "privacy": {"inject_bug": bug, "max_grad_norm": c}}))
    return train_run(cfg, out, progress=False, overwrite=True)


def row_share(run_dir: Path, n: int = 60) -> float:
    """Median over canaries of ‖∇_row ℓ‖ / ‖∇_θ ℓ‖ at the initial weights."""
    import torch

    from dp_audit.attacks import whitebox as wb
    from dp_audit.canaries import read_canaries

    can = read_canaries(run_dir / "canaries.jsonl")[:n]
    tok = wb._load_tokenizer(run_dir / "tokenizer")
    ids = wb.canary_token_ids(tok, can)
    model = wb._load_weights_only(run_dir / "base_model")
    emb = model.get_input_embeddings().weight
    out = []
    for c, t in zip(can, ids):
        model.zero_grad()
        enc = tok([c.text], return_tensors="pt")
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, torch.tensor([c.label]))
        loss.backward()
        total = math.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None))
        out.append(float(emb.grad[int(t)].norm()) / total)
    return float(np.median(out))


def dirac_simulation(*, q: float, steps: int, sigma: float, sigma_bug_acc: float, m: int, claim: float,
                     delta: float, seeds: int) -> dict[str, float]:
    """Exact: a Dirac gradient canary owns one coordinate; per step it gets its clipped gradient
    (norm G = 10 C, C = 1) when sampled, plus N(0, s²) noise. Returns the failure rate per case."""
    rng = np.random.default_rng(0)
    noise = {"none": sigma, "no-noise": 0.0, "noise-multiplier-ignored": 1.0,
             "accountant-rate-10x-smaller": sigma_bug_acc, "no-clip": sigma}
    rates = {}
    for case, s in noise.items():
        fails = 0
        for _ in range(seeds):
            member = rng.random(m) < 0.5
            k = rng.binomial(steps, q, size=m) * member
            g = 10.0 if case == "no-clip" else 1.0
            score = k * g + s * math.sqrt(steps) * rng.standard_normal(m)
            fails += max(bounds(score, member, delta).values()) > claim
        rates[case] = fails / seeds
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from dp_audit.attacks.whitebox import scores_for_run
    from dp_audit.io import read_json

    tmp = Path(tempfile.mkdtemp(prefix="bugpower-"))
    t0 = time.time()
    rows = []
    share = None
    info = {}
    try:
        for bug, c in CASES:
            fails, fails_norm, aucs, lbs = 0, 0, [], []
            for seed in range(args.seeds):
                run = train(tmp / ".cache", tmp / "run", bug=bug, c=c, seed=seed)
                man = read_json(run / "manifest.json")
                claim = float(man["claim"]["epsilon"])
                delta = float(man["claim"]["delta"])
                info.setdefault((bug, c), {**man["notes"]["dp"], "claim": claim})
                if share is None:
                    share = row_share(run)
                proj, member, res = scores_for_run(run)
                b = bounds(proj, member, delta)
                bn = bounds(res.norm, member, delta)
                lbs.append(max(b.values()))
                aucs.append(roc_auc_score(member, proj))
                fails += max(b.values()) > claim
                fails_norm += max(bn.values()) > claim
            rows.append((bug, c, info[(bug, c)]["claim"], info[(bug, c)]["noise_multiplier"], float(np.mean(aucs)),
                         float(np.median(lbs)), fails, fails_norm))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.seeds
    print(f"white-box rare-token audit, {n} seeds per case, K={K} (α/K = {ALPHA / K:g} per bound), "
          f"m=300 canaries, claimed ε≈1 (δ=1e-5; claim and σ of seed 0); {time.time() - t0:.0f} s")
    print(f"{'bug':<30}{'C':>8}{'claim':>7}{'σ':>7}{'AUC':>7}{'med ε_LB':>10}{'fail (proj)':>13}{'fail (norm)':>13}")
    for bug, c, claim, sigma, auc, lb, f, fn in rows:
        print(f"{bug:<30}{c:>8g}{claim:>7.3f}{sigma:>7.2f}{auc:>7.3f}{lb:>10.2f}{f:>8d}/{n:<4d}{fn:>8d}/{n:<4d}")
    print(f"\nmedian share of a canary's gradient norm on its own row at θ_0: {share:.2e}")
    dp = info[("none", C_NOISE)]
    q, steps, sigma = dp["sample_rate"], dp["steps"], dp["noise_multiplier"]
    sig_acc = info[("accountant-rate-10x-smaller", C_NOISE)]["noise_multiplier"]
    print(f"row-attack μ ceilings (q={q:.3f}, T={steps}): noise-ignored ≲ share·q√T = {share * q * math.sqrt(steps):.1e}, "
          f"accountant-10x ≲ share·q√T/σ_bug = {share * q * math.sqrt(steps) / sig_acc:.1e}")
    rates = dirac_simulation(q=q, steps=steps, sigma=sigma, sigma_bug_acc=sig_acc, m=300, claim=1.0,
                             delta=1e-5, seeds=max(n, 20))
    print("Dirac gradient canaries at the same (q, T, σ), exact simulation, failure rate: "
          + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
