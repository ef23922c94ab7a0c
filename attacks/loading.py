"""Load a save_pretrained classifier or causal LM (or a PEFT adapter on a base), offline."""
from __future__ import annotations
import json, warnings
from pathlib import Path
from dp_audit.errors import IntegrityError, UsageError


def load_hf_model(path, *, kind=None, base=None, tokenizer_path=None):
    from transformers import AutoModelForSequenceClassification, AutoModelForCausalLM, AutoTokenizer
    from dp_audit.hf_compat import enable_prefix_tuning, quiet_transformers
    quiet_transformers()
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"model directory not found: {path}")
    is_adapter = (path / "adapter_config.json").is_file()
    cfg_dir = Path(base) if is_adapter and base else path
    if not (cfg_dir / "config.json").is_file():
        raise UsageError(f"no config.json in {cfg_dir}" + (" (a PEFT adapter needs --base)" if is_adapter and not base else ""))
    arch = (json.loads((cfg_dir / "config.json").read_text()).get("architectures") or [""])[0]
    kind = kind or ("causal-lm" if "CausalLM" in arch or "LMHead" in arch else "classifier")
    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(cfg_dir), local_files_only=True)
            if is_adapter:
                from peft import PeftModel
                enable_prefix_tuning(model)
                model = PeftModel.from_pretrained(model, str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise IntegrityError(f"cannot load model weights from {path}: {str(exc).splitlines()[0][:200]}") from None
    tok_dir = next((p for p in (tokenizer_path, path, path.parent / "tokenizer", cfg_dir) if p and Path(p).is_dir()
                    and any((Path(p) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))), None)
    if tok_dir is None:
        raise UsageError(f"no tokenizer found for {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    model.eval()
    return model, tokenizer, {"kind": kind, "name": path.name, "architecture": arch, "adapter": is_adapter}
