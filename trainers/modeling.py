"""Build the sequence classifier from the backbone with the configured tuning, and run it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from dp_audit.config import ModelConfig
from dp_audit.errors import UsageError
# Models whose absolute positions start after the padding index (RoBERTa: padding_idx + 1 + i)
from dp_audit.hf_compat import PADDED_POSITION_MODELS, enable_prefix_tuning, quiet_transformers

Batch = dict[str, torch.Tensor]
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# The classification head's top-level modules (``tuning = "head"`` trains these only)
HEAD_MODULES = ("classifier", "pre_classifier", "score")


# LoRA's target modules by model type (PEFT's table has no entry for DistilBERT)
LORA_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
                "camembert": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "gpt2": ["c_attn"]}


@dataclass(frozen=True)
class InputLayout:
    """Which inputs a model's forward gets, from its config: ``token_type_ids`` only for models
    with a token-type table (BERT-style; GPT-2 would embed them with its word table), and
    explicit (B, L) ``position_ids`` in the model's own convention (Opacus' per-sample embedding
    gradients need them of shape (B, L), contiguous; DESIGN.md §4)."""

    token_type_ids: bool = True
    positions: str = "arange"  # arange: 0..L-1 | padded: RoBERTa's padding_idx + 1 + i
    pad_id: int = 0


def input_layout(config) -> InputLayout:
    padded = getattr(config, "model_type", "") in PADDED_POSITION_MODELS
    return InputLayout(token_type_ids=bool(getattr(config, "type_vocab_size", 0)),
                       positions="padded" if padded else "arange", pad_id=int(config.pad_token_id or 0))


def build_classifier(backbone_dir: Path, model_cfg: ModelConfig, *, num_labels: int = 2, generator: torch.Generator,
                     pad_token_id: int | None = None):
    """The backbone with a classification head, wrapped for prefix/LoRA tuning. Every module whose
    weights the checkpoint lacks (the head of a masked-LM or base checkpoint) or holds with another
    shape (a head for another number of labels) is initialised from ``generator``; a checkpoint's
    own head of the right shape is kept. Safetensors only, no remote code."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(backbone_dir), num_labels=num_labels, local_files_only=True, use_safetensors=True,
                trust_remote_code=False, ignore_mismatched_sizes=True, output_loading_info=True,
                # float32 whatever the checkpoint's dtype (transformers 5 keeps a bf16/fp16 checkpoint's
                # dtype): per-example norms, clipping and noise in half precision round the norm
                # that bounds the sensitivity, and DP-ZO's in-place restore bound assumes float32
                dtype=torch.float32,
            )
    except Exception as exc:  # ValueError (architecture without a sequence-classification class), OSError ...
        line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UsageError(f"cannot load {backbone_dir} as a sequence classifier: {type(exc).__name__}: {line[:240]}") \
            from None
    if pad_token_id is not None and (model.config.pad_token_id is None or _is_decoder(model.config)):
        # GPT-2-style classifiers read the last token before the first padding id: it must be the
        # tokenizer's (a config's own pad id that the tokenizer never emits would read a pad)
        model.config.pad_token_id = pad_token_id
    from dp_audit.trainers.backbone import init_weights_

    fresh = {k for k in info.get("missing_keys") or []} | {m[0] if isinstance(m, tuple) else m
                                                           for m in info.get("mismatched_keys") or []}
    for name in sorted({k.rsplit(".", 1)[0] for k in fresh}):
        init_weights_(model.get_submodule(name), generator=generator)
    truncate_layers_(model, model_cfg.backbone_layers)
    model = apply_tuning(model, model_cfg, generator=generator)
    if model_cfg.tuning == "head" and model_cfg.head_cache:
        from dp_audit.trainers.feature_cache import cache_frozen_body_

        cache_frozen_body_(model)
    if model_cfg.tuning == "prefix" and model_cfg.prefix_layers and model_cfg.prefix_cache:
        from dp_audit.trainers.feature_cache import cache_bottom_layers_

        cache_bottom_layers_(model.get_base_model())
    return model


def truncate_layers_(model, k: int) -> None:
    """Keep the first ``k`` encoder layers of a BERT-style model (0: all); the config says so, so
    the saved checkpoint reloads as trained. ``k`` above the model's depth is a usage error."""
    if not k:
        return
    from dp_audit.errors import UsageError

    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise UsageError(f"model.backbone_layers = {k}: the backbone has no BERT-style encoder.layer list")
    if k > len(layers):
        raise UsageError(f"model.backbone_layers = {k} exceeds the backbone's {len(layers)} layers")
    encoder.layer = layers[:k]
    model.config.num_hidden_layers = k




def _is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or config.model_type in ("gpt2", "gpt_neo",
                                                                                                  "gptj", "gpt_neox")


def _lora_targets(model) -> list[str] | None:
    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    if mapping.get(model_type):
        return None  # PEFT's own table
    raise UsageError(f"model.tuning = 'lora': no known attention modules for model type {model_type!r}; "
                     "use tuning = 'full', 'head' or 'prefix'")


def _takes_cache(model) -> bool:
    import inspect

    params = inspect.signature(model.base_model.forward).parameters
    return "cache" in params or "past_key_values" in params


def freeze_all_but_head(model) -> list[str]:
    """``tuning = "head"``: only the classification head is trained (the backbone is a frozen
    feature extractor). Returns the names of the trainable modules."""
    heads = [n for n, _ in model.named_children() if n in HEAD_MODULES]
    if not heads:
        raise UsageError(f"model.tuning = 'head': {type(model).__name__} has no module named "
                         f"{' / '.join(HEAD_MODULES)}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] in heads)
    return heads


def freeze_word_embeddings(model) -> torch.nn.Parameter:
    """``model.freeze_embeddings``: the word-embedding table (``get_input_embeddings()``) stops
    training; position/type embeddings, the encoder and the head still train. Returns the table."""
    emb = model.get_input_embeddings()
    if emb is None or getattr(emb, "weight", None) is None:
        raise UsageError(f"model.freeze_embeddings: {type(model).__name__} has no input-embedding table")
    emb.weight.requires_grad_(False)
    return emb.weight


def apply_tuning(model, model_cfg: ModelConfig, *, generator: torch.Generator, task_type: str = "SEQ_CLS"):
    """Wrap ``model`` for ``model_cfg.tuning`` (PEFT ``task_type``: SEQ_CLS, or CAUSAL_LM for
    causal LMs), PEFT's own random init redone with ``generator``."""
    if model_cfg.tuning in ("full", "head"):
        if model_cfg.tuning == "head":
            freeze_all_but_head(model)
        elif model_cfg.freeze_embeddings:
            freeze_word_embeddings(model)
        model.train()
        return model
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    if model_cfg.tuning == "prefix":
        if not _takes_cache(model):
            raise UsageError(f"model.tuning = 'prefix' needs a model that takes a key/value cache; "
                             f"{type(model.base_model).__name__} does not: use tuning = 'lora', 'head' or 'full'")
        enable_prefix_tuning(model, positions=model_cfg.prefix_positions, prefix_layers=model_cfg.prefix_layers)
        cfg = PrefixTuningConfig(task_type=TaskType[task_type], num_virtual_tokens=model_cfg.num_virtual_tokens,
                                 prefix_projection=False, num_layers=model_cfg.prefix_layers or None)
    else:
        cfg = LoraConfig(task_type=TaskType[task_type], r=model_cfg.lora_r, lora_alpha=2 * model_cfg.lora_r,
                         target_modules=_lora_targets(model), lora_dropout=0.0,
                         fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")  # GPT-2's Conv1D
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # PEFT initialises with the global RNG: redo it with ours
        for name, p in peft_model.named_parameters():
            if "prompt_encoder" in name:
                p.normal_(0.0, 1.0, generator=generator)
            elif "lora_A" in name:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.uniform_(-bound, bound, generator=generator)
            elif "lora_B" in name:
                p.zero_()
    peft_model.train()
    return peft_model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params, *, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (default) or plain SGD: with SGD the final weights are a linear function of the
    (noisy) updates, which white-box audits of DP-SGD rely on."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int], *, max_length: int,
           layout: InputLayout = InputLayout()) -> Batch:
    if not len(texts):  # e.g. no public split
        empty = torch.zeros((0, max_length), dtype=torch.long)
        out = {"input_ids": empty, "attention_mask": empty.clone()}
    else:
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    ids = out["input_ids"]
    n, length = ids.shape
    if layout.token_type_ids:
        out["token_type_ids"] = torch.zeros_like(ids)
    # (B, L) and contiguous: Opacus' per-sample embedding gradients need it (DESIGN.md §4)
    if layout.positions == "padded":
        real = (ids != layout.pad_id).long()  # as RoBERTa's create_position_ids_from_input_ids
        out["position_ids"] = (torch.cumsum(real, dim=1) * real + layout.pad_id).contiguous()
    else:
        out["position_ids"] = torch.arange(length).unsqueeze(0).expand(n, -1).contiguous()
    out["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return out


def input_keys(batch: Batch) -> tuple[str, ...]:
    """The model inputs a batch holds (of :data:`INPUT_KEYS`, in that order)."""
    return tuple(k for k in INPUT_KEYS if k in batch)


def model_inputs(batch: Batch) -> Batch:
    return {k: batch[k] for k in INPUT_KEYS if k in batch}


def subset(data: Batch, idx: torch.Tensor | slice) -> Batch:
    return {k: v[idx] for k, v in data.items()}


def batches(data: Batch, batch_size: int) -> Iterator[Batch]:
    n = data["input_ids"].shape[0]
    for s in range(0, n, batch_size):
        yield subset(data, slice(s, s + batch_size))


def batch_loss(model, batch: Batch, *, reduction: str = "mean") -> torch.Tensor:
    """The loss of a batch, mean or sum over its examples: cross-entropy of the class logits, or
    for causal-LM batches (``labels`` of shape (B, L)) each example's mean next-token NLL
    (dp_audit.trainers.causal_lm). DP-Flat's components call it, so they work on both."""
    if batch["labels"].dim() == 2:
        from dp_audit.trainers.causal_lm import lm_nll_each

        each = lm_nll_each(model, batch)
        return each.mean() if reduction == "mean" else each.sum()
    return torch.nn.functional.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"], reduction=reduction)


def logits_of(model, batch: Batch) -> torch.Tensor:
    return model(**model_inputs(batch)).logits


@torch.inference_mode()
def predict_losses(model, data: Batch, *, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy losses and correctness, in eval mode."""
    was_training = model.training
    model.eval()
    losses, correct = [], []
    for b in batches(data, batch_size):
        logits = logits_of(model, b)
        losses.append(torch.nn.functional.cross_entropy(logits, b["labels"], reduction="none"))
        correct.append(logits.argmax(-1) == b["labels"])
    model.train(was_training)
    return torch.cat(losses).numpy().astype(float), torch.cat(correct).numpy()


def accuracy(model, data: Batch, *, batch_size: int = 128) -> float:
    _, correct = predict_losses(model, data, batch_size=batch_size)
    return float(correct.mean()) if correct.size else float("nan")
