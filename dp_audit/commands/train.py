"""``dp-audit train``: train a model with one of the registered trainers and write a run directory."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from dp_audit.config import RunConfig, from_mapping, read_toml
from dp_audit.overrides import apply_overrides

EPILOG = """examples:
  dp-audit train --config examples/train-dpsgd.toml --out runs/dpsgd
  dp-audit train --config examples/train-dpsgd.toml --out runs/eps1 --set privacy.epsilon=1

trainers: nondp, dpsgd, dpflat, dpzo (see docs/trainers.md). Unknown config keys are errors.
Your own data and model: [data] source = csv | jsonl | parquet | hf-disk with train/dev/test/public,
[model] path = a local save_pretrained folder, tuning = full | prefix | lora | head
(docs/trainers.md "Your data and your model"); a bad data file or model folder exits 2.
The run directory holds manifest.json, model/, tokenizer/, canaries.jsonl, ledger.json (docs/formats.md)."""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a run directory", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML config (default: all defaults, trainer dpsgd)")
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. privacy.epsilon=1 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def load_config(path: Path | None, overrides: list[str], *, quiet: bool = False) -> RunConfig:
    data = read_toml(path)
    if quiet:
        overrides = [*overrides, "train.progress=false"]
    return from_mapping(RunConfig, apply_overrides(data, overrides))


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, quiet=args.quiet)
    from dp_audit.trainers.base import train_run

    out = train_run(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite, inputs=[args.config])
    manifest = json.loads((out / "manifest.json").read_text())
    claim = manifest["claim"]
    eps = claim["epsilon"]
    eps_txt = "none (non-private)" if (isinstance(eps, str) or not math.isfinite(eps)) else f"{eps:.3g}"
    print(f"trained {cfg.trainer} ({cfg.model.tuning}) -> {out}")
    print(f"  claimed epsilon: {eps_txt} at delta={claim['delta']:g}; {utility_line(manifest)}")
    if claim.get("unaccounted"):
        print("  not accounted: " + "; ".join(u["component"] for u in claim["unaccounted"]))
    return 0


def utility_line(manifest: dict) -> str:
    """Test accuracy of a classifier, test perplexity of a causal LM (its metrics have no accuracy)."""
    metrics = manifest.get("notes", {}).get("metrics", {})
    for key, name in (("test_accuracy", "test accuracy"), ("test_perplexity", "test perplexity")):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{name}: {value:.3f}"
    return "no test metric"
