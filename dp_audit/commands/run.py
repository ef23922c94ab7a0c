"""``dp-audit run``: audit a run directory (or any Hugging Face checkpoint) and write audit.json."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from dp_audit.config import AuditConfig, from_mapping, read_toml
from dp_audit.errors import UsageError
from dp_audit.overrides import apply_overrides
from dp_audit.scale.cli import add_arguments as add_scale_arguments
from dp_audit.scale.cli import from_args as scale_from_args

EPILOG = """examples:
  dp-audit run --run runs/dpsgd
  dp-audit run --run runs/dpsgd --config audit.toml --set alpha=0.01
  dp-audit run --run runs/nondp --set 'attacks=["all"]' --set reference_models=8
  dp-audit run --model my_ckpt/ --canaries canaries.jsonl --epsilon 3 --delta 1e-5 --out runs/mine
  dp-audit run --model adapter/ --base-model base_model/ --canaries canaries.jsonl --epsilon 8 --delta 1e-5 --out runs/peft
  dp-audit run --model my_lm/ --canaries secrets.jsonl --candidates candidates.txt --epsilon 8 --delta 1e-5 \\
      --out runs/lm --set 'attacks=["all"]'

attacks (docs/attacks.md): loss, ref-loss, lira-online, lira-offline, rmia (classifiers and causal LMs),
zlib, mink, minkpp, exposure, extraction (causal LMs); "all" = every attack that applies to the model
kind and to what is available; "auto" (the default) = ["loss"] for a classifier, ["all"] for a causal LM. ref-loss / lira-* / rmia need reference_models > 0, which are trained with the
run's own trainer (dp-audit run directories only; cached in references/, resumable). exposure needs
--candidates (one candidate secret a line, drawn like the canaries' secrets) and adds the Secret
Sharer bound P[exposure >= k] <= e^eps 2^-k + delta to the estimates; audit.json "secrets" also
holds each canary's exposure extrapolated to the whole secret space (skew-normal fit: an estimate).
extraction (secret canaries "prefix + secret") prompts with the prefix and counts greedy and sampled
generations that reproduce the secret; with a known secret space |R| it adds the bound
P[extracted] <= e^eps (S+1)/|R| + delta. Options in [secrets]: prefix, space_size, extraction,
samples, temperature, top_k (docs/language-models.md).

landscapes (docs/landscapes.md; classifiers): probes = ["curve-gaussian", "curve-filter",
"sharpness-rho", "dpflat-probe", "hessian-top", "hessian-trace", "prefix-layer-sharpness"], options
in [probe.<name>] tables (name = "<probe>" runs one probe twice under two labels; splits, params),
data in [landscape] (splits: train, member, nonmember, dev; max_examples). The "landscape" attack
(attacks = [..., "landscape"]; white-box) scores each canary by its loss increase under random
weight perturbations ([landscape] attack_eta, attack_directions, attack_kind, attack_sign) and is
gated like the others. Writes landscapes/*.npz and audit.json's "landscapes".
  dp-audit run --run runs/dpsgd --set 'probes=["curve-gaussian"]' --set 'attacks=["loss","landscape"]'

audit.toml keys: attacks, estimators, alpha, threshold, probes, reference_models, reference_private
(all | half), formats, seed, batch_size, bootstrap, [probe.<name>], [landscape], [secrets] (docs/formats.md). Writes
audit.json, scores/*.npz, signals/*.npz and the reports into the run directory."""


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="audit a trained model: attacks, ε lower bounds, report", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to audit (either --run, or --model with --canaries/--epsilon/--delta/--out)")
    src.add_argument("--run", type=Path, help="run directory written by dp-audit train")
    src.add_argument("--model", type=Path, help="save_pretrained directory (or PEFT adapter directory)")
    src.add_argument("--base", "--base-model", dest="base", type=Path,
                     help="base model directory for a PEFT adapter (default: the adapter config's "
                          "base_model_name_or_path, if it is a local directory)")
    src.add_argument("--kind", choices=("classifier", "causal-lm"), help="model kind (default: from config.json)")
    src.add_argument("--canaries", type=Path, help="canaries.jsonl (docs/formats.md)")
    src.add_argument("--epsilon", type=float, help="claimed ε")
    src.add_argument("--delta", type=float, help="claimed δ")
    src.add_argument("--out", type=Path, help="run directory to create for --model")
    src.add_argument("--candidates", type=Path,
                     help="with --model: candidate secrets for the exposure attack (one text a line)")
    src.add_argument("--allow-pickle", action="store_true",
                     help="with --model: load pickle weight files (pytorch_model.bin) with torch "
                          "weights_only=True; default: safetensors only")
    p.add_argument("--config", type=Path, help="audit config TOML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an audit config value, e.g. alpha=0.01 (repeatable)")
    p.add_argument("--no-report", action="store_true", help="write audit.json only")
    p.add_argument("--overwrite", action="store_true", help="with --model: replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_scale_arguments(p, "reference models")
    p.set_defaults(func=run)


def load_audit_config(path: Path | None, overrides: list[str]) -> AuditConfig:
    data = read_toml(path)
    return from_mapping(AuditConfig, apply_overrides(data, overrides))


def run(args: argparse.Namespace) -> int:
    from dp_audit.audit import _validate_before_writing, run_audit, target_from_checkpoint, target_from_run

    cfg = load_audit_config(args.config, args.overrides)
    cfg = dataclasses.replace(cfg, scale=scale_from_args(args, cfg.scale))
    _validate_before_writing(cfg)  # before --out is created (issue 13 item 9)
    if (args.run is None) == (args.model is None):
        raise UsageError("give either --run DIR or --model DIR (with --canaries, --epsilon, --delta, --out)")
    if args.run is not None:
        if args.candidates is not None:
            raise UsageError("--candidates goes with --model (a dp-audit run directory brings its own canaries)")
        target = target_from_run(args.run)
    else:
        missing = [f"--{n}" for n in ("canaries", "epsilon", "delta", "out") if getattr(args, n) is None]
        if missing:
            raise UsageError(f"--model needs {', '.join(missing)}")
        target = target_from_checkpoint(model=args.model, canaries=args.canaries, epsilon=args.epsilon,
                                        delta=args.delta, out=args.out, base=args.base, kind=args.kind,
                                        overwrite=args.overwrite, candidates=args.candidates,
                                        allow_pickle=args.allow_pickle)
    audit = run_audit(target, cfg, progress=not args.quiet, render=not args.no_report)
    print_summary(audit, target.run_dir)
    return 0


def fmt_eps(x) -> str:
    if isinstance(x, str):
        return "∞" if x == "inf" else x
    return "∞" if math.isinf(x) else f"{x:.3g}"


def print_summary(audit: dict, run_dir: Path) -> None:
    v = audit.get("verdict") or {}
    print(f"audit of {run_dir} ({audit['canaries']['m']} canaries, {audit['threat_model']})")
    for a in audit["attacks"]:
        tpr = a.get("tpr_at_fpr", {})
        print(f"  attack {a['name']:<14} AUC {a['auc']:.3f}   TPR@0.1%FPR {tpr.get('0.001', float('nan')):.3f}"
              f"   TPR@1%FPR {tpr.get('0.01', float('nan')):.3f}")
    for e in audit["estimates"]:
        tag = "" if e.get("is_bound", True) else "  (estimate, not a bound)"
        print(f"  ε_LB {e['method']:<16} on {e.get('attack') or '-':<12} {e['epsilon_lb']:.3f} "
              f"(α={e['alpha']:.3g}){tag}")
    if v:
        status = v["status"].upper()
        print(f"verdict: {status}: empirical ε_LB {v['epsilon_lb_max']:.3f} vs claimed ε "
              f"{fmt_eps(v['claimed_epsilon'])} (α={v['alpha']}, {v.get('threat_model', 'black-box')})")
    print(f"wrote {run_dir / 'audit.json'}" + (f" and {run_dir / 'report.html'}" if (run_dir / 'report.html').exists() else ""))
