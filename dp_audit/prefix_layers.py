"""Prefix tuning on the top k encoder layers only (``model.prefix_layers = k``).

PEFT's prefix gives every encoder layer a key/value prefix. With ``route_prefix_to_top_(model, k)``
the PEFT prefix has k layers (``PrefixTuningConfig(num_layers=k)``) and they go to the top k
encoder layers: prefix layer j is encoder layer (L − k) + j. The L − k layers below receive no
prefix, so the text's hidden states after them do not depend on any trainable parameter: the
**bottom** (embeddings + layers 0..L−k−1) is a fixed function of the input. It always runs in eval
mode and without gradients (a frozen feature extractor, as head tuning's body;
trainers/feature_cache.py), so its outputs can be cached per input without changing anything the
model computes: logits with and without the cache are equal (tests/test_prefix_layers.py).

The body's ``forward`` is replaced on the instance (weights, names and ``save_pretrained`` are
untouched); k is stored in the config (``dp_audit_prefix_layers``) so a saved base model reloads
routed the same way (dp_audit.hf_compat.enable_prefix_tuning). Calls without a prefix cache go to
the original forward. BERT-style encoders (``encoder.layer``: BERT, RoBERTa, MiniLM) only.

Imported lazily (torch, transformers).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dp_audit.errors import UsageError

LAYERS_KEY = "dp_audit_prefix_layers"


def body_of(model: Any) -> torch.nn.Module:
    """The encoder body of a sequence classifier (``model.bert``, ``model.roberta``, ...)."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(body, torch.nn.Module):
        raise UsageError(f"model.prefix_layers: {type(model).__name__} has no encoder body")
    return body


def encoder_layers(body: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(getattr(body, "encoder", None), "layer", None)
    if layers is None or not hasattr(body, "embeddings") or not hasattr(body, "_create_attention_masks"):
        raise UsageError(f"model.prefix_layers needs a BERT-style encoder (embeddings + encoder.layer); "
                         f"{type(body).__name__} is not one: set model.prefix_layers = 0")
    return layers


class _ShiftedCache:
    """The prefix cache seen by the top layers: encoder layer i reads prefix layer i − offset."""

    def __init__(self, inner: Any, offset: int):
        self.inner, self.offset = inner, offset

    def update(self, key, value, layer_idx, *args, **kwargs):
        return self.inner.update(key, value, layer_idx - self.offset, *args, **kwargs)


def bottom_modules(body: torch.nn.Module, offset: int) -> list[torch.nn.Module]:
    """The modules of the bottom: the embeddings and the first ``offset`` encoder layers."""
    return [body.embeddings, *list(encoder_layers(body))[:offset]]


def self_attention_mask(body: torch.nn.Module, attention_mask: torch.Tensor, hidden: torch.Tensor) -> Any:
    """The encoder's self-attention mask for a 2-D padding mask, built by the model's own
    ``_create_attention_masks`` (so it suits the configured attention implementation).

    Its signature changed within transformers 5.x (5.25 added a required ``position_ids``), so the
    arguments are matched by name. Position ids are never passed: the mask must come from the padding
    mask alone (position ids that restart would be read as packed sequences and split the
    attention)."""
    import inspect

    create = body._create_attention_masks
    offered = {"attention_mask": attention_mask, "encoder_attention_mask": None, "embedding_output": hidden,
               "encoder_hidden_states": None, "cache": None, "past_key_values": None, "position_ids": None}
    params = inspect.signature(create).parameters
    unknown = [n for n, p in params.items()
               if n not in offered and p.default is inspect.Parameter.empty
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if unknown:
        raise UsageError(f"model.prefix_layers: {type(body).__name__}._create_attention_masks needs "
                         f"{', '.join(unknown)}, unknown to dp-audit (transformers version not supported): "
                         f"set model.prefix_layers = 0")
    masks = create(**{n: v for n, v in offered.items() if n in params})
    return masks[0] if isinstance(masks, tuple) else masks


def compute_bottom(body: torch.nn.Module, offset: int, *, input_ids, attention_mask=None, token_type_ids=None,
                   position_ids=None) -> torch.Tensor:
    """Hidden states of the text after the bottom (no prefix), in eval mode, without gradients."""
    modules = bottom_modules(body, offset)
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            hidden = body.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
            if offset:
                mask = attention_mask if attention_mask is not None else torch.ones(input_ids.shape,
                                                                                    dtype=torch.long)
                ext = self_attention_mask(body, mask, hidden)
                for layer in modules[1:]:
                    hidden = layer(hidden, ext)
    finally:
        for m, was in zip(modules, modes):
            m.train(was)
    return hidden


# Sequence classifiers whose head reads only the first token of the last layer (BERT's pooler,
# RoBERTa's classifier): the last layer is computed for that token's query only
FIRST_TOKEN_HEADS = ("bert", "roberta", "xlm-roberta", "camembert")


def reads_first_token(body: torch.nn.Module) -> bool:
    return getattr(body.config, "model_type", "") in FIRST_TOKEN_HEADS


def first_token_layer(layer: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      cache: Any) -> torch.Tensor:
    """The last encoder layer (a BertLayer) for the first token only, shape (B, 1, H): the query of
    token 0 attends to the prefix and every text token (keys and values of all of them), then the
    attention output and the feed-forward block run on that token. The classification head reads
    nothing else, so the logits equal the full layer's (tests/test_prefix_layers.py), at about
    1/L of its cost. Eager attention with BERT's additive mask (0 kept, dtype-min masked)."""
    sa = layer.attention.self
    batch, length, _ = hidden.shape
    heads, head_dim = sa.num_attention_heads, sa.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], heads, head_dim).transpose(1, 2)

    query = split(sa.query(hidden[:, :1]))
    key, value = cache.update(split(sa.key(hidden)), split(sa.value(hidden)), sa.layer_idx)
    scores = torch.matmul(query, key.transpose(2, 3)) * sa.scaling
    keep = attention_mask[:, None, None, :].to(torch.bool)
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    probs = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), p=sa.dropout.p, training=sa.training)
    context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, 1, heads * head_dim)
    attended = layer.attention.output(context, hidden[:, :1])
    return layer.output(layer.intermediate(attended), attended)


def route_prefix_to_top_(model: Any, k: int) -> int:
    """Route a k-layer prefix to the top k encoder layers of ``model`` (the classifier, before PEFT
    wraps it); records k in its config. Returns the offset L − k (the number of bottom layers)."""
    body = body_of(model)
    layers = encoder_layers(body)
    n = len(layers)
    if not 0 < k <= n:
        raise UsageError(f"model.prefix_layers = {k} must be in 1..{n} (the model's encoder layers; 0: every layer)")
    setattr(model.config, LAYERS_KEY, int(k))
    offset = n - k
    if getattr(body, "_dp_audit_prefix_offset", None) == offset:
        return offset
    original = getattr(body, "_dp_audit_original_forward", body.forward)
    body._dp_audit_original_forward = original
    body._dp_audit_prefix_offset = offset
    body._dp_audit_bottom = lambda **inputs: compute_bottom(body, offset, **inputs)

    def forward(input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None and (kwargs.get("output_hidden_states") or kwargs.get("output_attentions")):
            # the routed forward returns the last layer for the first token only and no per-layer
            # outputs; the original forward would read the k-layer prefix on the bottom layers
            raise UsageError("model.prefix_layers: hidden states / attentions of a top-layer prefix model are "
                             "not available (set model.prefix_layers = 0)")
        if cache is None or input_ids is None or inputs_embeds is not None:
            return original(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        return _top_forward(body, offset, cache, input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids, position_ids=position_ids)

    body.forward = forward
    return offset


def _shifted_positions(config: Any, input_ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """The positions the unrouted model gives the text after a cache of ``prefix_len`` entries:
    BERT prefix_len, prefix_len + 1, ...; RoBERTa-style models (dp_audit.hf_compat) number real
    tokens from padding_idx + 1 + prefix_len and give pads padding_idx."""
    from dp_audit.hf_compat import PADDED_POSITION_MODELS

    batch, length = input_ids.shape
    if getattr(config, "model_type", "") in PADDED_POSITION_MODELS:
        pad = int(config.pad_token_id or 0)
        real = (input_ids != pad).long()
        return ((torch.cumsum(real, dim=1) + prefix_len) * real + pad).contiguous()
    return torch.arange(prefix_len, prefix_len + length).unsqueeze(0).expand(batch, -1).contiguous()


def _top_forward(body, offset: int, cache, *, input_ids, attention_mask, token_type_ids, position_ids):
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    batch, length = input_ids.shape
    prefix_len = int(cache.get_seq_length())
    if position_ids is None:  # the model's own convention under a cache: the text starts after it
        position_ids = _shifted_positions(body.config, input_ids, prefix_len)
    if attention_mask is None:
        attention_mask = torch.ones(batch, prefix_len + length, dtype=torch.long)
    text_mask = attention_mask[:, prefix_len:]
    bottom: Callable[..., torch.Tensor] = body._dp_audit_bottom
    hidden = bottom(input_ids=input_ids, attention_mask=text_mask, token_type_ids=token_type_ids,
                    position_ids=position_ids)
    ext = self_attention_mask(body, attention_mask, hidden)
    shifted = _ShiftedCache(cache, offset)
    top = list(encoder_layers(body))[offset:]
    for layer in top[:-1]:
        hidden = layer(hidden, ext, cache=shifted)
    if reads_first_token(body):
        hidden = first_token_layer(top[-1], hidden, attention_mask, shifted)
    else:
        hidden = top[-1](hidden, ext, cache=shifted)
    pooled = body.pooler(hidden) if getattr(body, "pooler", None) is not None else None
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=hidden, pooler_output=pooled)


__all__ = ["LAYERS_KEY", "body_of", "bottom_modules", "compute_bottom", "encoder_layers", "route_prefix_to_top_"]
