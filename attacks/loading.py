"""Load a model to audit, offline: a ``save_pretrained`` directory or a PEFT adapter on its base.

Accepted layouts (docs/formats.md "Run directory"):

- ``config.json`` + ``model.safetensors`` (a Hugging Face ``save_pretrained`` directory);
- ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT prefix / LoRA): the base model is
  ``base`` if given, else the adapter's ``base_model_name_or_path`` when that is a local directory.

The tokenizer comes from ``tokenizer_path``, the model directory, a ``tokenizer/`` folder beside
it, or the base directory, in that order. Everything is read with ``local_files_only=True``.
Errors are one line: a missing directory, config or tokenizer is a :class:`UsageError`; weights
that cannot be read (truncated or corrupt safetensors, shapes that do not match the config,
weights missing from the checkpoint) are an :class:`IntegrityError`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from dp_audit.errors import IntegrityError, UsageError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
_CAUSAL_TASKS = {"CAUSAL_LM"}
_CLASSIFIER_TASKS = {"SEQ_CLS"}


def detect_kind(architectures: list[str] | None, *, task_type: str | None = None) -> str:
    """``causal-lm`` for ``*ForCausalLM`` / ``*LMHeadModel`` architectures (or a PEFT CAUSAL_LM
    adapter), ``classifier`` for ``*ForSequenceClassification`` (or SEQ_CLS)."""
    if task_type in _CAUSAL_TASKS:
        return "causal-lm"
    if task_type in _CLASSIFIER_TASKS:
        return "classifier"
    for arch in architectures or []:
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "causal-lm"
        if arch.endswith("ForSequenceClassification"):
            return "classifier"
    raise UsageError(f"cannot tell the model kind from architectures {architectures!r}; "
                     "pass kind='classifier' or kind='causal-lm'")


def _kind_of_architectures(archs: list[str]) -> str | None:
    try:
        return detect_kind(archs)
    except UsageError:
        return None


def check_kind(path: Path, kind: str | None, *, archs: list[str], adapter_cfg: dict[str, Any] | None) -> str:
    """The model kind, checked in one line against what the checkpoint says: a PEFT adapter's
    ``task_type`` must be CAUSAL_LM or SEQ_CLS and agree with its base model's architecture, and
    an explicit ``kind`` must agree with both (a causal LM read as a classifier would load with a
    random head and be audited as garbage)."""
    from_archs = _kind_of_architectures(archs)
    from_task = None
    if adapter_cfg is not None:
        task = adapter_cfg.get("task_type")
        if task is not None and task not in _CAUSAL_TASKS | _CLASSIFIER_TASKS:
            raise UsageError(f"{path}: PEFT adapter task_type {task!r} is not supported (CAUSAL_LM or SEQ_CLS)")
        from_task = detect_kind(None, task_type=task) if task is not None else None
        if from_task and from_archs and from_task != from_archs:
            raise UsageError(f"{path}: the adapter is for a {from_task} (task_type {task}) but its base model is a "
                             f"{from_archs} ({archs[0]})")
    found = from_task or from_archs
    if kind is not None and found is not None and kind != found:
        raise UsageError(f"{path} is a {found} model, not a {kind}: drop --kind or pass --kind {found}")
    if kind is None and found is None:
        raise UsageError(f"cannot tell the model kind from architectures {archs!r}; "
                         "pass kind='classifier' or kind='causal-lm'")
    return kind or found


def resolve_adapter_base(path: str | Path, base: str | Path | None = None) -> Path | None:
    """The base model directory of a PEFT adapter directory (None if ``path`` is no adapter); a
    one-line UsageError when it cannot be found offline."""
    path = Path(path)
    adapter_file = path / "adapter_config.json"
    if not adapter_file.is_file():
        return None
    return _resolve_base(path, _read_json(adapter_file, "adapter config"), base)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} is not a JSON object (got a {type(obj).__name__})")
    return obj


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_model_dir(path: Path, *, allow_pickle: bool = False) -> None:
    """Refuse, in one line, a model directory that (a) has a symlink leaving it, or (b) holds weights
    only in a pickle format (``pytorch_model.bin``) unless ``allow_pickle``: unpickling runs code,
    and only torch's ``weights_only`` default stands in the way. Safetensors are always preferred."""
    root = path.resolve()
    files = [f for f in path.rglob("*") if f.is_file()]
    for f in files:
        target = f.resolve()
        if root not in target.parents:
            raise UsageError(f"{f} is a symlink that leaves the model directory {path} (to {target}); "
                             "copy the file in instead")
    has_safetensors = any(f.suffix == ".safetensors" for f in files)
    pickles = sorted(f.name for f in files if f.suffix in PICKLE_SUFFIXES)
    if pickles and not has_safetensors and not allow_pickle:
        raise UsageError(f"{path} holds weights only in a pickle format ({pickles[0]}); convert them to "
                         "safetensors, or pass --allow-pickle to load them with torch weights_only=True")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {line[:240]}"


def _resolve_base(path: Path, adapter_cfg: dict[str, Any], base: str | Path | None) -> Path:
    if base is not None:
        base = Path(base)
        if not base.is_dir():
            raise UsageError(f"base model directory not found: {base}")
        return base
    named = adapter_cfg.get("base_model_name_or_path")
    for cand in ([Path(named)] if named else []) + [path.parent / "base_model"]:
        if cand.is_dir() and (cand / "config.json").is_file():
            return cand
    raise UsageError(f"{path} is a PEFT adapter; its base model {named!r} is not a local directory with a "
                     f"config.json: pass --base-model DIR")


def _check_prefix_layers(adapter_cfg: dict, config: dict, cfg_dir: Path) -> None:
    """A prefix adapter's layer count must match where the base model puts it: every encoder layer,
    or the top k when its config says ``dp_audit_prefix_layers = k`` (dp_audit.prefix_layers). A
    top-k adapter on a base without the key would put the prefix on the wrong layers (or crash)."""
    layers = adapter_cfg.get("num_layers")
    depth = config.get("num_hidden_layers", config.get("n_layer"))
    expected = int(config.get("dp_audit_prefix_layers") or 0) or depth
    if layers is not None and expected is not None and int(layers) != int(expected):
        raise IntegrityError(f"the prefix adapter has {layers} layer(s) but the base model in {cfg_dir} expects "
                             f"{expected} (dp_audit_prefix_layers = {config.get('dp_audit_prefix_layers', 0)}, "
                             f"{depth} encoder layers): use the run's base_model folder")


def _find_tokenizer(candidates: list[Path | None]) -> Path:
    for p in candidates:
        if p is not None and Path(p).is_dir() and any((Path(p) / f).is_file() for f in _TOKENIZER_FILES):
            return Path(p)
    shown = ", ".join(str(p) for p in candidates if p is not None)
    raise UsageError(f"no tokenizer found (looked in {shown})")


def load_hf_model(
    path: str | Path,
    *,
    kind: str | None = None,
    base: str | Path | None = None,
    tokenizer_path: str | Path | None = None,
    allow_pickle: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Return ``(model, tokenizer, info)`` with the model in eval mode; ``info`` has ``kind``,
    ``name``, ``architecture``, ``adapter`` (bool), ``base`` (path or None), ``tokenizer`` (path)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from dp_audit.hf_compat import quiet_transformers

    quiet_transformers()
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"model directory not found: {path}")
    if kind is not None and kind not in ("classifier", "causal-lm"):
        raise UsageError(f"unknown model kind {kind!r}; known: classifier, causal-lm")
    adapter_file = path / "adapter_config.json"
    is_adapter = adapter_file.is_file()
    adapter_cfg = _read_json(adapter_file, "adapter config") if is_adapter else {}
    cfg_dir = _resolve_base(path, adapter_cfg, base) if is_adapter else path
    for d in {path, cfg_dir}:
        check_model_dir(d, allow_pickle=allow_pickle)
    # without allow_pickle only safetensors are read (transformers/peft would fall back to a .bin)
    safe = {} if allow_pickle else {"use_safetensors": True}
    config_file = cfg_dir / "config.json"
    if not config_file.is_file():
        raise UsageError(f"no config.json in {cfg_dir} (need a save_pretrained directory or a PEFT adapter)")
    config = _read_json(config_file, "model config")
    archs = config.get("architectures") or []
    kind = check_kind(path, kind, archs=archs, adapter_cfg=adapter_cfg if is_adapter else None)
    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, report = cls.from_pretrained(str(cfg_dir), local_files_only=True, output_loading_info=True, **safe)
            missing = sorted(report.get("missing_keys") or [])
            if missing:
                raise IntegrityError(f"cannot load model weights from {cfg_dir}: {len(missing)} weight(s) missing "
                                     f"from the checkpoint (e.g. {missing[0]})")
            if is_adapter:
                from peft import PeftModel

                from dp_audit.hf_compat import enable_prefix_tuning

                if adapter_cfg.get("peft_type") == "PREFIX_TUNING":
                    _check_prefix_layers(adapter_cfg, config, cfg_dir)
                    enable_prefix_tuning(model)
                model = PeftModel.from_pretrained(model, str(path), local_files_only=True, **safe)
    except (UsageError, IntegrityError):
        raise
    except Exception as exc:  # SafetensorError, RuntimeError (shape mismatch), OSError, ValueError ...
        raise IntegrityError(f"cannot load model weights from {path}: {_first_line(exc)}") from None
    tok_dir = _find_tokenizer([Path(tokenizer_path) if tokenizer_path else None, path,
                               path.parent / "tokenizer", cfg_dir if is_adapter else None])
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as exc:
        raise UsageError(f"cannot load tokenizer from {tok_dir}: {_first_line(exc)}") from None
    model.eval()
    info = {"kind": kind, "name": path.name, "architecture": archs[0] if archs else None, "adapter": is_adapter,
            "peft_type": adapter_cfg.get("peft_type"), "base": str(cfg_dir) if is_adapter else None,
            "tokenizer": str(tok_dir)}
    return model, tokenizer, info
