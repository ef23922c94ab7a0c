"""Known-bug regressions of the gate (DESIGN.md §11; docs/whitebox.md).

Each case trains a tiny DP-SGD model (plain SGD, full fine-tuning, 300 rare-token canaries,
claimed ε ≈ 1 at δ = 1e-5) through ``train_run``, audits it with the black-box LOSS attack
(``run_audit``) plus the white-box rare-token attack (``dp_audit.attacks.whitebox``), and runs
the real gate CLI: a buggy pipeline must exit 1, the correct pipeline at the same settings exit 0.

Two settings that differ only in the clipping norm C:
- C = 0.1: the row updates of a member are far above float32 resolution, so "no noise" leaves
  non-member rows bit-identical to the initial weights and every member row moved;
- C = 1e-5: an unclipped canary gradient (norm ~1, ~1e-3 of it on its own row) is ~1e5 × C, so
  "no clipping" puts ~100 × C on the row against noise σ·C per step.

"noise multiplier ignored" and "accountant rate 10× smaller" are invisible to the attacks: with the head
freshly initialised (std 0.02), only ~1.6e-3 of a canary's gradient norm lies on its own row, so
the row's μ stays below share·q·√T ≈ 2e-3 under these bugs, far below the μ ≈ 2 that one-run
bounds with 300 canaries need (docs/whitebox.md gives the arithmetic and the measured power
table). The gate catches them through the ledger's ``observed`` record of the mechanism as run
(dp_audit.accounting.observed_epsilon_lower); a stronger white-box canary (Dirac gradient
canaries injected by the trainer) would catch them empirically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, merge

BASE = merge(TINY, {
    "data": {"n_train": 300},
    "canaries": {"m": 300, "kind": "rare-token", "n_words": 2, "seed": 101},
    "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 10, "batch_size": 64, "seed": 0},
    "privacy": {"epsilon": 1.0, "delta": 1e-5},
})
C_NOISE = 0.1  # setting for "no noise" (and the two undetected bugs)
C_CLIP = 1e-5  # setting for "no clipping"


def _train(cache_dir: Path, out: Path, *, bug: str, max_grad_norm: float) -> Path:
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import train_run

    cfg = run_config_from_dict(merge(BASE, {"model": {"cache_dir": str(cache_dir)},
                                            "privacy": {"inject_bug": bug, "max_grad_norm": max_grad_norm}}))
    return train_run(cfg, out, progress=False)


def audit_with_whitebox(run_dir: Path) -> None:
    """What ``dp-audit run`` should do for a full fine-tuning run with rare-token canaries:
    the black-box attacks, then ``scores/whitebox-rare-token.npz`` and its AttackResult
    (threat model white-box) added to audit.json and to the manifest's artifacts."""
    from dp_audit.attacks.metrics import attack_metrics
    from dp_audit.attacks.whitebox import NAME, THREAT_MODEL, scores_for_run
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig
    from dp_audit.io import atomic_write_json, read_json, save_npz
    from dp_audit.manifest import add_artifacts

    run_audit(target_from_run(run_dir), AuditConfig(attacks=("loss",), formats=()), progress=False, render=False)
    scores, member, res = scores_for_run(run_dir)
    rel = f"scores/{NAME}.npz"
    save_npz(run_dir / rel, scores=scores, member=member)
    entry = attack_metrics(NAME, scores, member, scores_file=rel, threat_model=THREAT_MODEL,
                           rng=np.random.default_rng(0), n_bootstrap=20)
    audit = read_json(run_dir / "audit.json")
    audit["attacks"].append({**entry.to_dict(), "details": {**entry.details, **res.details}})
    audit["threat_model"] = THREAT_MODEL  # the strongest adversary among the counted attacks
    atomic_write_json(run_dir / "audit.json", audit)
    add_artifacts(run_dir, [rel, "audit.json"])


def _gate_exit(run_dir: Path) -> int:
    from dp_audit.cli import main

    return main(["gate", "--run", str(run_dir), "--quiet"])


def _verdict(run_dir: Path, *, observed: bool = True):
    from dp_audit.gate import GatePolicy, evaluate_gate

    return evaluate_gate(run_dir, GatePolicy(observed_mechanism=observed)).verdict


def _estimates(run_dir: Path):
    from dp_audit.gate import GatePolicy, evaluate_gate

    return evaluate_gate(run_dir, GatePolicy()).estimates


CASES = [
    ("none", C_NOISE, 0),
    ("no-noise", C_NOISE, 1),
    ("none", C_CLIP, 0),
    ("no-clip", C_CLIP, 1),
]


@pytest.mark.parametrize("bug,max_grad_norm,expected", CASES,
                         ids=["correct-C0.1", "no-noise", "correct-C1e-5", "no-clip"])
def test_gate_catches_known_bug(cache_dir, tmp_path, bug, max_grad_norm, expected):
    run_dir = _train(cache_dir, tmp_path / "run", bug=bug, max_grad_norm=max_grad_norm)
    audit_with_whitebox(run_dir)
    v = _verdict(run_dir, observed=False)  # the empirical audit alone
    assert v.n_tests == 2  # {loss, whitebox-rare-token} x {fdp}: α/2 each
    assert (1 if v.status == "fail" else 0) == expected, \
        f"{bug} at C={max_grad_norm}: ε_LB {v.epsilon_lb_max:.3f} ({v.best_method} on {v.best_attack}) " \
        f"vs claim {v.claimed_epsilon:.3f}"
    assert _gate_exit(run_dir) == expected  # the default gate (observed mechanism included) agrees
    if expected == 1:
        assert v.best_attack == "whitebox-rare-token"  # the black-box LOSS attack alone misses it
        assert v.epsilon_lb_max > 2 * v.claimed_epsilon


@pytest.mark.parametrize("bug", ["noise-multiplier-ignored", "accountant-rate-10x-smaller"])
def test_gate_catches_noise_scale_bugs(cache_dir, tmp_path, bug):
    """Statistically undetectable at this scale (the empirical bounds stay far below the claim:
    see the module docstring), these bugs are caught by the ledger's record of the mechanism as
    run: the optimizer's noise multiplier and the loader's Poisson rate give an ε (optimistic
    PLD, a lower bound) above the claim."""
    run_dir = _train(cache_dir, tmp_path / "run", bug=bug, max_grad_norm=C_NOISE)
    audit_with_whitebox(run_dir)
    v = _verdict(run_dir)
    assert _gate_exit(run_dir) == 1
    assert v.best_method == "observed-mechanism" and v.threat_model == "step-level"
    empirical = [e for e in _estimates(run_dir) if e.method != "observed-mechanism"]
    assert max(e.epsilon_lb for e in empirical) < v.claimed_epsilon  # the attacks alone miss it


def test_correct_pipeline_observed_mechanism_matches_its_claim(cache_dir, tmp_path):
    run_dir = _train(cache_dir, tmp_path / "run", bug="none", max_grad_norm=C_NOISE)
    audit_with_whitebox(run_dir)
    obs = [e for e in _estimates(run_dir) if e.method == "observed-mechanism"]
    assert len(obs) == 1
    assert 0.8 * obs[0].epsilon_lb < obs[0].epsilon_lb <= _verdict(run_dir).claimed_epsilon
    assert _gate_exit(run_dir) == 0
