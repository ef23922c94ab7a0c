"""Build the sequence classifier from the backbone with the configured tuning, and run it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from dp_audit.config import ModelConfig
from dp_audit.hf_compat import enable_prefix_tuning, quiet_transformers

Batch = dict[str, torch.Tensor]
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# The classification head's top-level modules (``tuning = "head"`` trains these only)
HEAD_MODULES = ("classifier", "pre_classifier", "score")


def build_classifier(backbone_dir: Path, model_cfg: ModelConfig, *, num_labels: int = 2, generator: torch.Generator):
    """The backbone with a fresh classification head (seeded), wrapped for prefix/LoRA tuning."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForSequenceClassification.from_pretrained(
            str(backbone_dir), num_labels=num_labels, local_files_only=True
        )
    truncate_layers_(model, model_cfg.backbone_layers)
    head = getattr(model, "classifier", None)  # the only new module; the pooler is pretrained
    if head is not None:
        from dp_audit.trainers.backbone import init_weights_

        init_weights_(head, generator=generator)
    model = apply_tuning(model, model_cfg, generator=generator)
    if model_cfg.tuning == "head" and model_cfg.head_cache:
        from dp_audit.trainers.feature_cache import cache_frozen_body_

        cache_frozen_body_(model)
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


def freeze_all_but_head(model) -> list[str]:
    """``tuning = "head"``: only the classification head is trained (the backbone is a frozen
    feature extractor). Returns the names of the trainable modules."""
    from dp_audit.errors import UsageError

    heads = [n for n, _ in model.named_children() if n in HEAD_MODULES]
    if not heads:
        raise UsageError(f"model.tuning = 'head': {type(model).__name__} has no module named "
                         f"{' / '.join(HEAD_MODULES)}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] in heads)
    return heads


def apply_tuning(model, model_cfg: ModelConfig, *, generator: torch.Generator):
    if model_cfg.tuning in ("full", "head"):
        if model_cfg.tuning == "head":
            freeze_all_but_head(model)
        model.train()
        return model
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    if model_cfg.tuning == "prefix":
        enable_prefix_tuning(model, positions=model_cfg.prefix_positions)
        cfg = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=model_cfg.num_virtual_tokens,
                                 prefix_projection=False)
    else:
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=model_cfg.lora_r, lora_alpha=2 * model_cfg.lora_r,
                         target_modules=["query", "value"], lora_dropout=0.0)
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


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int], *, max_length: int) -> Batch:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    n, length = enc["input_ids"].shape
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": torch.zeros_like(enc["input_ids"]),
        # (B, L) and contiguous: Opacus' per-sample embedding gradients need it (DESIGN.md §4)
        "position_ids": torch.arange(length).unsqueeze(0).expand(n, -1).contiguous(),
        "labels": torch.as_tensor(list(labels), dtype=torch.long),
    }


def subset(data: Batch, idx: torch.Tensor | slice) -> Batch:
    return {k: v[idx] for k, v in data.items()}


def batches(data: Batch, batch_size: int) -> Iterator[Batch]:
    n = data["input_ids"].shape[0]
    for s in range(0, n, batch_size):
        yield subset(data, slice(s, s + batch_size))


def logits_of(model, batch: Batch) -> torch.Tensor:
    return model(**{k: batch[k] for k in INPUT_KEYS}).logits


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
