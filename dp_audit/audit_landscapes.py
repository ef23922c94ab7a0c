"""The landscape stage of ``dp-audit run`` (DESIGN.md §8; docs/landscapes.md).

One entry point, :func:`run_landscapes`, called by :func:`dp_audit.audit.run_audit` with the
loaded target model. It

1. builds the data splits the probes see (``[landscape]`` table, :class:`~dp_audit.config.LandscapeConfig`):
   ``train`` (real private training examples) and ``dev`` for a dp-audit run directory, rebuilt
   from the manifest's config by the deterministic generator (dp_audit.trainers.data, imported
   lazily; the rebuilt training split must match the manifest's ``data_fingerprint``) and
   tokenised with the run's own ``tokenizer/``; ``member`` / ``nonmember`` (the canaries) always.
   An external ``--model`` checkpoint has the canaries only. Each split is a seeded random
   subsample of at most ``landscape.max_examples`` examples;
2. runs the probes named in ``probes`` (options in ``[probe.<name>]`` tables; a table may name
   the registry probe with ``name = ...`` so one probe can run twice under two labels) and
   stores their arrays in ``landscapes/curves.npz``;
3. when ``attacks`` lists ``"landscape"``, computes the landscape membership signal
   (dp_audit.landscapes.signal) on every canary, writes ``scores/landscape.npz`` and returns an
   :class:`~dp_audit.records.AttackResult` (threat model white-box: it perturbs the weights) that
   the estimators and the gate use like any other attack. The sign is fixed before the canaries
   are scored: ``flat`` / ``sharp`` from the config, or ``auto``: chosen on real training examples
   vs dev examples (known membership, not the canaries; dp-audit runs only).

Seeds: one ``torch.Generator`` per part, each seeded from ``AuditConfig.seed`` through
``numpy.random.SeedSequence``; all are recorded in ``landscapes.seeds``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from dp_audit.config import AuditConfig, from_mapping
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import save_npz

LANDSCAPE_ATTACK = "landscape"
CURVES_FILE = "landscapes/curves.npz"
SIGNAL_FILE = "landscapes/signal.npz"
SCORES_FILE = f"scores/{LANDSCAPE_ATTACK}.npz"
EXTERNAL_MAX_LENGTH = 128  # the attacks' tokenisation of canaries (dp_audit.attacks._forward)
_SEED_PARTS = {"subsample": 1, "probes": 2, "attack": 3}


@dataclass(frozen=True)
class LandscapeOutcome:
    """What the stage adds to audit.json: the ``landscapes`` object (None: nothing ran), attack
    results to append to ``attacks``, and the files written (relative to the run directory)."""

    landscapes: dict[str, Any] | None
    attacks: tuple[Any, ...] = ()
    files: tuple[str, ...] = ()


def wanted(cfg: AuditConfig) -> bool:
    return bool(cfg.probes) or LANDSCAPE_ATTACK in cfg.attacks


# ---------------------------------------------------------------------------------------------
# config


def probe_specs(cfg: AuditConfig) -> list[Any]:
    """The :class:`~dp_audit.landscapes.probes.ProbeSpec` of every entry of ``probes``, validated
    (unknown probes, unknown or mistyped options, tables without a ``probes`` entry: UsageError
    naming the key)."""
    from dp_audit.landscapes.probes import PROBES, ParamSpec, ProbeSpec

    tables = cfg.probe
    if not isinstance(tables, Mapping):
        raise UsageError(f"probe must be a table of [probe.<name>] tables, got {type(tables).__name__}")
    for key, table in tables.items():
        if not isinstance(table, Mapping):
            raise UsageError(f"probe.{key} must be a table, got {type(table).__name__}")
        if key not in cfg.probes:
            raise UsageError(f"probe.{key} is configured but {key!r} is not listed in probes")
    if len(set(cfg.probes)) != len(cfg.probes):
        raise UsageError(f"probes lists a name twice: {list(cfg.probes)}")
    specs = []
    for label in cfg.probes:
        table = dict(tables.get(label, {}))
        name = table.pop("name", label)
        if not isinstance(name, str) or name not in PROBES.names():
            raise UsageError(f"probes: unknown probe {name!r} (probe.{label}.name); known: {', '.join(PROBES.names())}")
        splits = table.pop("splits", None)
        if splits is not None and (not isinstance(splits, (list, tuple)) or not all(isinstance(s, str) for s in splits)):
            raise UsageError(f"probe.{label}.splits must be a list of split names")
        raw = from_mapping(ParamSpec, table.pop("params", {}) or {}, where=f"probe.{label}.params")
        params = ParamSpec(trainable_only=bool(raw.trainable_only),
                           include=None if raw.include is None else tuple(str(x) for x in raw.include),
                           layers=None if raw.layers is None else tuple(int(x) for x in raw.layers))
        for key in ("label",):
            if key in table:
                raise UsageError(f"probe.{label}.{key}: the label is the table's name")
        probe = PROBES.get(name)
        from_mapping(probe.config_cls, table, where=f"probe.{label}")  # unknown keys and types, by name
        specs.append(ProbeSpec(name=name, options=table, splits=None if splits is None else tuple(splits),
                               label=None if label == name else label, params=params))
    return specs


def _seeds(cfg: AuditConfig) -> dict[str, int]:
    return {part: int(np.random.SeedSequence([cfg.seed, 7, code]).generate_state(1, dtype=np.uint64)[0] >> 2)
            for part, code in _SEED_PARTS.items()}


# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class _Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    source: str


def _splits(target: Any, cfg: AuditConfig) -> tuple[dict[str, _Split], int]:
    """The available splits and the tokenisation length."""
    cans = target.canaries
    out = {
        "member": _Split(tuple(c.text for c in cans if c.member), tuple(int(c.label) for c in cans if c.member),
                         "member canaries"),
        "nonmember": _Split(tuple(c.text for c in cans if not c.member),
                            tuple(int(c.label) for c in cans if not c.member), "non-member canaries"),
    }
    if target.source != "dp-audit":
        return out, EXTERNAL_MAX_LENGTH
    from dp_audit.config import run_config_from_manifest
    from dp_audit.trainers.data import make_task

    run_cfg = run_config_from_manifest(target.manifest["config"])
    task = make_task(run_cfg.data)
    expected = target.manifest.get("data_fingerprint")
    if expected and task.fingerprint != expected:
        raise IntegrityError(f"the training data rebuilt from {target.run_dir / 'manifest.json'} 'config' does not "
                             f"match its data_fingerprint ({task.fingerprint[:12]}… vs {str(expected)[:12]}…)")
    out = {"train": _Split(task.train.texts, task.train.labels, "private training examples (members; no canaries)"),
           **out, "dev": _Split(task.dev.texts, task.dev.labels, "dev split (non-members)")}
    return out, int(run_cfg.data.max_length)


def _encode(tokenizer: Any, split: _Split, *, max_length: int) -> dict[str, Any]:
    import torch

    enc = tokenizer(list(split.texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": torch.as_tensor(list(split.labels), dtype=torch.long)}
    if "token_type_ids" in enc:  # not for models without a token-type table (DistilBERT, GPT-2)
        batch["token_type_ids"] = enc["token_type_ids"]
    return batch


def _subsample(n: int, max_examples: int, rng: np.random.Generator) -> np.ndarray:
    if max_examples == 0 or n <= max_examples:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_examples, replace=False))


def _evaluator(tokenizer: Any, split: _Split, idx: np.ndarray, *, max_length: int, batch_size: int):
    from dp_audit.landscapes.evaluation import ClassifierEvaluator

    sub = _Split(tuple(split.texts[i] for i in idx), tuple(split.labels[i] for i in idx), split.source)
    return ClassifierEvaluator([_encode(tokenizer, sub, max_length=max_length)], batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# parameters


@contextlib.contextmanager
def _adapter_trainable(model: Any) -> Iterator[None]:
    """A PEFT adapter loaded for inference has every parameter frozen: for the probes' default
    selection (``trainable_only``) mark the parameters the adapter trained (prefix / LoRA weights
    and ``modules_to_save``, e.g. the classification head), and restore the flags afterwards."""
    named = list(model.named_parameters())
    flags = [p.requires_grad for _, p in named]
    try:
        if hasattr(model, "peft_config"):
            for n, p in named:
                p.requires_grad_("prompt_encoder" in n or "lora_" in n or "modules_to_save" in n)
        yield
    finally:
        for (_, p), f in zip(named, flags):
            p.requires_grad_(f)


# ---------------------------------------------------------------------------------------------
# running


def _merge(out: dict[str, Any], part: dict[str, Any]) -> None:
    out["curves"].extend(part["curves"])
    for section in ("sharpness", "curvature", "per_layer"):
        for key, value in part[section].items():
            if key in ("lambda_max", "trace", "trace_se"):
                out[section].setdefault(key, value)
            elif key in out[section]:
                raise UsageError(f"two probes labelled {key!r} in {section}: rename one [probe.<name>] table")
            else:
                out[section][key] = value


def _curve_arrays(curves: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for c in curves:
        key = f"{c['label']}/{c['split']}"
        arrays[f"{key}/eta"] = np.asarray(c["eta"], dtype=float)
        arrays[f"{key}/losses"] = np.asarray(c["losses"], dtype=float)  # (K directions, |eta|)
        arrays[f"{key}/seeds"] = np.asarray(c["seeds"], dtype=np.int64)
        if c.get("accs") is not None:
            arrays[f"{key}/accs"] = np.asarray(c["accs"], dtype=float)
    return arrays


def run_landscapes(target: Any, cfg: AuditConfig, *, model: Any, tokenizer: Any, kind: str,
                   rng: np.random.Generator, progress: bool = True) -> LandscapeOutcome:
    """Run the configured probes and the landscape attack on ``model`` (module docstring)."""
    if not wanted(cfg):
        return LandscapeOutcome(None)
    specs = probe_specs(cfg)
    if kind != "classifier":
        raise UsageError(f"landscape probes and the {LANDSCAPE_ATTACK!r} attack support classifiers only "
                         f"(this model is a {kind}); remove probes / {LANDSCAPE_ATTACK!r} from the audit config")
    import torch
    from tqdm.auto import tqdm

    from dp_audit.landscapes.params import n_selected, select_parameters
    from dp_audit.landscapes.probes import run_probes

    lc = cfg.landscape
    seeds = _seeds(cfg)
    run_dir = Path(target.run_dir)
    available, max_length = _splits(target, cfg)
    names = list(lc.splits) or list(available)
    missing = [s for s in names if s not in available]
    if missing:
        raise UsageError(f"landscape.splits {missing} are not available for this model (have {', '.join(available)}; "
                         "train and dev exist for dp-audit run directories only)")
    sub_rng = np.random.default_rng(seeds["subsample"])
    picks = {s: _subsample(len(available[s].texts), lc.max_examples, sub_rng) for s in available}
    evaluators = {s: _evaluator(tokenizer, available[s], picks[s], max_length=max_length, batch_size=cfg.batch_size)
                  for s in names if len(available[s].texts)}
    data = {s: {"n": int(picks[s].size), "n_available": len(available[s].texts), "source": available[s].source}
            for s in names}
    landscapes: dict[str, Any] = {"curves": [], "sharpness": {}, "curvature": {}, "per_layer": {},
                                  "data": data, "seeds": seeds, "max_length": max_length, "files": []}
    files: list[str] = []
    attacks: list[Any] = []
    model.eval()
    with _adapter_trainable(model):
        if specs:
            gen = torch.Generator().manual_seed(seeds["probes"])
            bar = tqdm(specs, desc="landscape probes", disable=not progress, leave=False)
            for spec in bar:
                bar.set_postfix_str(spec.label or spec.name)
                _merge(landscapes, run_probes(model, evaluators, [spec], generator=gen, progress=progress))
            if landscapes["curves"]:
                save_npz(run_dir / CURVES_FILE, **_curve_arrays(landscapes["curves"]))
                files.append(CURVES_FILE)
        if LANDSCAPE_ATTACK in cfg.attacks:
            params = select_parameters(model, include=list(lc.attack_include) or None)
            result, summary, arrays = _landscape_attack(target, cfg, model, tokenizer, params, evaluators,
                                                        max_length=max_length, seed=seeds["attack"], rng=rng,
                                                        progress=progress)
            summary["n_parameters"] = n_selected(tuple(_entries(params)))
            save_npz(run_dir / SIGNAL_FILE, **arrays)
            save_npz(run_dir / SCORES_FILE, scores=arrays["canaries/score"], member=arrays["canaries/member"])
            files += [SIGNAL_FILE, SCORES_FILE]
            landscapes["signal"] = summary
            attacks.append(result)
    landscapes["files"] = list(files)
    return LandscapeOutcome(landscapes=landscapes, attacks=tuple(attacks), files=tuple(files))


def _entries(params):
    from dp_audit.landscapes.params import as_selection

    return as_selection(params)


def _landscape_attack(target: Any, cfg: AuditConfig, model: Any, tokenizer: Any, params: Any,
                      evaluators: Mapping[str, Any], *, max_length: int, seed: int, rng: np.random.Generator,
                      progress: bool) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """Δ_i on every canary (canary order), with the same K directions on every split."""
    import torch

    from dp_audit.attacks.metrics import attack_metrics
    from dp_audit.landscapes.evaluation import ClassifierEvaluator
    from dp_audit.landscapes.signal import SIGNS, choose_sign, loss_increase

    lc = cfg.landscape
    cans = target.canaries
    member = np.array([c.member for c in cans], dtype=bool)
    canary_split = _Split(tuple(c.text for c in cans), tuple(int(c.label) for c in cans), "canaries")
    ev = ClassifierEvaluator([_encode(tokenizer, canary_split, max_length=max_length)], batch_size=cfg.batch_size)

    def increase(evaluator) -> np.ndarray:  # the same directions for every call: a fresh generator, same seed
        return loss_increase(model, evaluator, params, eta=lc.attack_eta, n_directions=lc.attack_directions,
                             kind=lc.attack_kind, generator=torch.Generator().manual_seed(seed), progress=progress)

    arrays: dict[str, np.ndarray] = {}
    delta = increase(ev)
    arrays["canaries/increase"] = delta
    arrays["canaries/member"] = member
    known = {}
    for s in ("train", "dev"):  # known membership, never the canaries
        if s in evaluators:
            known[s] = increase(evaluators[s])
            arrays[f"{s}/increase"] = known[s]
    sign, source = lc.attack_sign, "fixed in the audit config"
    if sign == "auto":
        if "train" not in known or "dev" not in known:
            raise UsageError("landscape.attack_sign = 'auto' chooses the sign on real training vs dev examples: it "
                             "needs a dp-audit run directory with the train and dev splits; use 'flat' or 'sharp'")
        sign, source = choose_sign(known["train"], known["dev"]), "chosen on train vs dev examples (not canaries)"
    score = SIGNS[sign] * delta
    arrays["canaries/score"] = score
    result = attack_metrics(LANDSCAPE_ATTACK, score, member, scores_file=SCORES_FILE, threat_model="white-box",
                            rng=rng, n_bootstrap=cfg.bootstrap)
    summary: dict[str, Any] = {
        "eta": lc.attack_eta, "kind": lc.attack_kind, "n_directions": lc.attack_directions, "sign": sign,
        "sign_source": source, "seed": seed, "scores_file": SCORES_FILE,
        "mean_increase": {"member": float(delta[member].mean()), "nonmember": float(delta[~member].mean()),
                          **{s: float(v.mean()) for s, v in known.items()}},
    }
    if "train" in known and "dev" in known:
        from sklearn.metrics import roc_auc_score

        y = np.r_[np.ones(known["train"].size), np.zeros(known["dev"].size)]
        summary["train_vs_dev_auc"] = float(roc_auc_score(y, SIGNS[sign] * np.r_[known["train"], known["dev"]]))
    details = {**result.details, "signal": "loss increase under random weight perturbation (docs/landscapes.md)",
               **{k: summary[k] for k in ("eta", "kind", "n_directions", "sign", "sign_source", "seed")}}
    return replace(result, details=details), summary, arrays


__all__ = ["CURVES_FILE", "LANDSCAPE_ATTACK", "LandscapeOutcome", "SCORES_FILE", "SIGNAL_FILE", "probe_specs",
           "run_landscapes", "wanted"]
