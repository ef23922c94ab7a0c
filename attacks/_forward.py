"""Batched forward passes behind :func:`dp_audit.attacks.signals.compute_signals` (torch code).

Texts are tokenised without padding and right-padded here (pad id = the tokenizer's, or 0: the
attention mask hides it), so tokenizers without a pad token (GPT-2) work unchanged and causal LMs
see their real tokens at positions 0..len−1.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dp_audit.errors import UsageError


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


MAX_INPUT_CAP = 512  # canaries are short; longer inputs only cost time


def max_input_length(model: Any, tokenizer: Any = None, *, cap: int = MAX_INPUT_CAP) -> int:
    """The longest token sequence ``model`` accepts: its position table (``max_position_embeddings``
    or ``n_positions``) minus the virtual tokens of a PEFT prefix (they take positions too), the
    tokenizer's own limit, and ``cap``. Inputs are truncated to it (recorded in audit.json)."""
    limits = [cap]
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            prefix = 0
            for pc in (getattr(model, "peft_config", None) or {}).values():
                if str(getattr(pc, "peft_type", "")).endswith("PREFIX_TUNING"):
                    prefix = max(prefix, int(getattr(pc, "num_virtual_tokens", 0) or 0))
            limits.append(value - prefix)
            break
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    limit = min(limits)
    if limit < 2:
        raise UsageError(f"the model accepts only {limit} input position(s): nothing to audit")
    return limit


def _batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_length: int, desc: str,
             progress: bool):
    if batch_size < 1 or max_length < 1:
        raise UsageError(f"batch_size and max_length must be >= 1 (got {batch_size}, {max_length})")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    starts = range(0, len(texts), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch"):
        chunk = list(texts[s:s + batch_size])
        enc = tokenizer(chunk, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        lengths = [len(x) for x in ids]
        width = max(lengths)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        tti = torch.zeros((len(chunk), width), dtype=torch.long) if "token_type_ids" in enc else None
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
            attn[i, :len(row)] = 1
            if tti is not None:
                tti[i, :len(row)] = torch.as_tensor(enc["token_type_ids"][i], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attn}
        if tti is not None:
            batch["token_type_ids"] = tti
        yield s, batch, lengths


def classifier_logits(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_length: int,
                      progress: bool) -> np.ndarray:
    was_training = model.training
    model.eval()
    dev = _device(model)
    out = []
    try:
        with torch.inference_mode():
            for _, batch, _ in _batches(tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                        desc="signals", progress=progress):
                logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits
                out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def causal_token_stats(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_length: int,
                       progress: bool, with_moments: bool, desc: str = "signals") -> dict[str, np.ndarray]:
    """Per text: next-token log-probs (n, L), their mask, the mean/std of log p(z) under the
    model's next-token distribution (min-k%++), and the mean token NLL (``loss``)."""
    was_training = model.training
    model.eval()
    dev = _device(model)
    rows: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
    try:
        with torch.inference_mode():
            for start, batch, lengths in _batches(tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                                  desc=desc, progress=progress):
                short = [start + i for i, n_tok in enumerate(lengths) if n_tok < 2]
                if short:
                    raise UsageError(f"text {short[0]} has fewer than 2 tokens: a causal LM predicts nothing in it")
                kw = {k: v.to(dev) for k, v in batch.items() if k != "token_type_ids"}
                logits = model(**kw).logits.float()
                for i, n_tok in enumerate(lengths):
                    logp = torch.log_softmax(logits[i, : n_tok - 1], dim=-1)  # predicts tokens 1..n_tok-1
                    target = kw["input_ids"][i, 1:n_tok]
                    lp = logp.gather(1, target[:, None]).squeeze(1)
                    mu = sigma = None
                    if with_moments:
                        p = logp.exp()
                        mu_t = (p * logp).sum(-1)
                        var = (p * (logp - mu_t[:, None]).square()).sum(-1)  # two-pass: no cancellation
                        mu, sigma = mu_t.cpu().numpy(), var.sqrt().cpu().numpy()
                    rows.append((start + i, lp.cpu().numpy(), mu, sigma))
    finally:
        model.train(was_training)
    n = len(texts)
    width = max(r[1].size for r in rows)
    lp_arr = np.zeros((n, width), dtype=np.float32)
    mask = np.zeros((n, width), dtype=bool)
    mu_arr = np.zeros((n, width), dtype=np.float32) if with_moments else None
    sd_arr = np.zeros((n, width), dtype=np.float32) if with_moments else None
    for idx, lp, mu, sd in rows:
        lp_arr[idx, : lp.size] = lp
        mask[idx, : lp.size] = True
        if with_moments:
            mu_arr[idx, : lp.size] = mu
            sd_arr[idx, : lp.size] = sd
    loss = -(lp_arr.astype(np.float64) * mask).sum(1) / mask.sum(1)
    return {"loss": loss, "token_logprobs": lp_arr, "token_mask": mask, "token_mu": mu_arr, "token_sigma": sd_arr}
