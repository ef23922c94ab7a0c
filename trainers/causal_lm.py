"""Causal language models in the trainers: encoding, the next-token loss, building, evaluation.

A causal-LM batch has ``input_ids``, ``attention_mask``, ``position_ids`` (B, L: 0..L−1,
contiguous, as Opacus needs) and ``labels`` (B, L): the input ids with −100 at the padding. The
loss of example i is the mean next-token NLL over its text tokens (token t+1 predicted from
tokens ≤ t, padding masked): the same quantity as the audit's ``loss`` signal
(dp_audit.attacks._forward.causal_token_stats). A batch's loss is the mean of the examples'
losses, never the token-weighted mean: Opacus' per-sample gradients (``loss_reduction="mean"``)
are then exactly the gradients of the per-example losses (tested against a per-example loop).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dp_audit.config import ModelConfig
from dp_audit.errors import UsageError
from dp_audit.hf_compat import quiet_transformers
from dp_audit.trainers.modeling import Batch, apply_tuning, batches, model_inputs

IGNORE = -100


def encode_lm(tokenizer, texts: Sequence[str], *, max_length: int) -> Batch:
    """Right-padded token ids, mask, positions 0..L−1 and next-token labels (−100 at padding)."""
    if not len(texts):
        empty = torch.zeros((0, max_length), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone(), "position_ids": empty.clone(),
                "labels": empty.clone()}
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if tokenizer.padding_side != "right":
        raise UsageError("causal-LM batches are right-padded: the tokenizer pads on the left")
    n, length = ids.shape
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": torch.arange(length).unsqueeze(0).expand(n, -1).contiguous(),
            "labels": ids.masked_fill(mask == 0, IGNORE)}


def lm_nll_each(model, batch: Batch) -> torch.Tensor:
    """(B,) mean next-token NLL of each example over its predicted text tokens."""
    return lm_nll_from_logits(model(**model_inputs(batch)).logits, batch)


def lm_nll_from_logits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """:func:`lm_nll_each` from the model's logits (B, L, V)."""
    labels = batch["labels"][:, 1:]
    logits = logits[:, -batch["labels"].shape[1]:][:, :-1]  # a PEFT prefix adds no logits, but be sure
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none",
                                            ignore_index=IGNORE)
    mask = (labels != IGNORE).to(nll.dtype)
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def lm_loss(model, batch: Batch) -> torch.Tensor:
    """The batch loss: the mean of :func:`lm_nll_each` (what Opacus' per-sample gradients assume)."""
    return lm_nll_each(model, batch).mean()


def build_causal_lm(model_dir: Path, model_cfg: ModelConfig, *, generator: torch.Generator,
                    pad_token_id: int | None = None, new_token_ids: Sequence[int] = ()):
    """The causal LM in ``model_dir`` (safetensors, offline, no remote code) wrapped for
    ``model.tuning`` (full, prefix or LoRA, PEFT task CAUSAL_LM). ``new_token_ids``: tokens added
    to the tokenizer for the secrets (trainers.secret_alphabet): the embedding table grows to hold
    them, their rows drawn from ``generator`` before the tuning's own initialisation."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True,
                                                         trust_remote_code=False)
    except Exception as exc:
        line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UsageError(f"cannot load {model_dir} as a causal LM: {type(exc).__name__}: {line[:240]}") from None
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if new_token_ids:
        from dp_audit.trainers.secret_alphabet import grow_embeddings

        grow_embeddings(model, new_token_ids, generator=generator)
    for m in model.modules():  # fine-tuning is deterministic: no dropout (as the tiny GPT-2)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return apply_tuning(model, model_cfg, generator=generator, task_type="CAUSAL_LM")


@torch.inference_mode()
def lm_eval(model, data: Batch, *, batch_size: int = 128) -> tuple[np.ndarray, int]:
    """Per-example mean NLL (eval mode) and the number of predicted tokens."""
    was_training = model.training
    model.eval()
    out = []
    tokens = 0
    for b in batches(data, batch_size):
        nll = lm_nll_each(model, b)
        n_tok = (b["labels"][:, 1:] != IGNORE).sum(1)
        out.append(torch.stack([nll, n_tok.to(nll.dtype)], 1))
        tokens += int(n_tok.sum())
    model.train(was_training)
    arr = torch.cat(out).double().numpy() if out else np.zeros((0, 2))
    return arr, tokens


def lm_evaluation_metrics(model, prep) -> dict[str, float]:
    """dev/test loss (mean per-example NLL) and perplexity (exp of the token-weighted mean NLL):
    post-processing of the released model on held-out splits only."""
    out: dict[str, float] = {}
    for name in ("test", "dev"):
        arr, tokens = lm_eval(model, getattr(prep, name))
        out[f"{name}_loss"] = float(arr[:, 0].mean()) if len(arr) else float("nan")
        out[f"{name}_perplexity"] = float(math.exp((arr[:, 0] * arr[:, 1]).sum() / tokens)) if tokens else float("nan")
    return out


def is_causal(prep) -> bool:
    return getattr(prep, "kind", "classifier") == "causal-lm"


def batch_loss_fn(prep):
    """The batch loss of a trainer on ``prep``: the LM loss, or None (the classifier's own)."""
    return lm_loss if is_causal(prep) else None


def per_example_loss_fn(prep):
    """Per-example losses for DP-ZO's scalars: the LM's, or the classifier's cross-entropy."""
    from dp_audit.trainers.zo import cross_entropy_each

    return lm_nll_each if is_causal(prep) else cross_entropy_each
