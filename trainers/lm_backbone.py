"""The tiny causal LM: a small GPT-2 pretrained on the public split of the generation task, cached.

``model.kind = "causal-lm"`` with ``backbone = "tiny"`` (or ``backbone = "tiny-gpt2"``): a
GPT-2 (``GPT2LMHeadModel``) of ``model.num_layers`` blocks, ``hidden_size`` wide, initialised
from ``model.pretrain_seed`` (explicit generator) and trained with next-token NLL on the public
split, with the word-level tokenizer of :func:`~dp_audit.trainers.tokenizer.train_lm_tokenizer`.
Cached like the classification backbone (:mod:`dp_audit.trainers.backbone`): one directory
``lm-<key>`` per key (model config + data config + tokenizer size + canary template + the public
file's sha256), written in a temporary sibling and renamed into place.

Position table: ``max(128, max_length + num_virtual_tokens + 8)`` rows (or
``model.max_position_embeddings``), room for a prefix of T virtual tokens in front of the text
should a setup number the text T..T+L−1 (with PEFT 0.21 and transformers 5 a prefix-tuned GPT-2
reads it at 0..L−1, in training and in the audit alike: checked). Pretraining shifts half of its
batches by a random offset, so that every row is trained and the model reads a text the same at
any offset.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from dp_audit.config import DataConfig, ModelConfig
from dp_audit.io import canonical_fingerprint
from dp_audit.trainers.backbone import _FILE_KEYS, build_cached
from dp_audit.trainers.data import TaskData

KEY_VERSION = 1


def n_positions(model_cfg: ModelConfig, data_cfg: DataConfig) -> int:
    return model_cfg.max_position_embeddings or max(128, data_cfg.max_length + model_cfg.num_virtual_tokens + 8)


def lm_backbone_key(model_cfg: ModelConfig, data_cfg: DataConfig, *, vocab_size: int, template: str,
                    public_sha256: str = "") -> str:
    relevant = {k: getattr(model_cfg, k) for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                                                   "pretrain_epochs", "pretrain_lr", "pretrain_seed")}
    data = dict(data_cfg.__dict__)
    if data_cfg.source == "builtin":
        for k in _FILE_KEYS:
            data.pop(k, None)
    key = {"lm": "tiny-gpt2", "model": relevant, "positions": n_positions(model_cfg, data_cfg), "data": data,
           "vocab": vocab_size, "template": template, "v": KEY_VERSION}
    if public_sha256:
        key["public"] = public_sha256
    return canonical_fingerprint(key)[:16]


def gpt2_config(model_cfg: ModelConfig, data_cfg: DataConfig, tokenizer):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions(model_cfg, data_cfg),
                      n_embd=model_cfg.hidden_size, n_layer=model_cfg.num_layers, n_head=model_cfg.num_heads,
                      n_inner=model_cfg.intermediate_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)


def init_gpt2_(model: torch.nn.Module, *, generator: torch.Generator, std: float = 0.02) -> None:
    """GPT-2's init with an explicit generator: matrices (Linear, Conv1D, embeddings) N(0, std²),
    biases 0, LayerNorm weights 1 (tied weights are initialised once)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std, generator=generator)
            elif name.endswith("weight"):  # LayerNorm
                p.fill_(1.0)
            else:
                p.zero_()


def ensure_lm_backbone(model_cfg: ModelConfig, data_cfg: DataConfig, task: TaskData, tokenizer, *, template: str,
                       cache_root: Path, progress: bool = True) -> Path:
    """A directory with the pretrained tiny GPT-2 and its tokenizer, built once per key."""
    public_sha = (task.source.get("files") or {}).get("public", {}).get("sha256", "")
    key = lm_backbone_key(model_cfg, data_cfg, vocab_size=len(tokenizer), template=template, public_sha256=public_sha)
    return build_cached(Path(cache_root) / f"lm-{key}",
                        lambda: pretrain_clm(model_cfg, data_cfg, task, tokenizer, progress=progress), tokenizer)


def pretrain_clm(model_cfg: ModelConfig, data_cfg: DataConfig, task: TaskData, tokenizer, *, progress: bool = True):
    """Next-token pretraining on the public split (AdamW, batches of 64, ``pretrain_epochs``)."""
    from transformers import GPT2LMHeadModel

    from dp_audit.trainers.causal_lm import encode_lm, lm_nll_each

    g = torch.Generator().manual_seed(model_cfg.pretrain_seed)
    config = gpt2_config(model_cfg, data_cfg, tokenizer)
    model = GPT2LMHeadModel(config)
    init_gpt2_(model, generator=g)
    data = encode_lm(tokenizer, task.public.texts, max_length=data_cfg.max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=model_cfg.pretrain_lr)
    model.train()
    bs, n, length = 64, int(data["input_ids"].shape[0]), int(data["input_ids"].shape[1])
    steps = model_cfg.pretrain_epochs * ((n + bs - 1) // bs)
    bar = tqdm(total=steps, desc="pretrain tiny GPT-2 (public split)", disable=not progress, leave=False)
    for _ in range(model_cfg.pretrain_epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, bs):
            idx = perm[s: s + bs]
            batch = {k: v[idx] for k, v in data.items()}
            if torch.rand(1, generator=g).item() < 0.5:  # train every position row (prefix tuning shifts the text)
                shift = int(torch.randint(0, config.n_positions - length + 1, (1,), generator=g))
                batch["position_ids"] = (batch["position_ids"] + shift).contiguous()
            loss = lm_nll_each(model, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model
