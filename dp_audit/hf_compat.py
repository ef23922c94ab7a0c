"""Compatibility shims between transformers 5 and PEFT (imported lazily; pulls in torch).

transformers 5 renamed BERT's ``past_key_values`` argument to ``cache`` (the old name is still
accepted through a deprecation decorator), but PEFT 0.21 decides whether a model supports
prefix tuning by looking for ``past_key_values`` in ``forward``'s signature. ``enable_prefix_tuning``
gives such a model a subclass of the same name whose ``forward`` names ``past_key_values`` and
passes it on as ``cache`` (through ``**kwargs`` down to the encoder); weights and
``save_pretrained`` output are unchanged.

**Positions of the text under a prefix.** With a key/value prefix of T virtual tokens, both paths
into BERT shift the text's absolute positions by T: PEFT adds T to explicit ``position_ids``
(``_adjust_prompt_learning_kwargs``), and BERT's embeddings start at the cache length when none
are given. P-tuning v2 (DP-Flat's code base) does the same on BERT-large, whose 512 positions are
all pretrained. dp-audit's small backbone is pretrained on texts of at most ``max_length``
tokens, so positions T..T+L−1 would read embeddings it never trained, and T + L must fit its
position table. ``positions="text"`` keeps the text at positions 0..L−1 (the prefix occupies no
position; it has none of its own anyway): the wrapper subtracts the cache length from the
positions it is given, or uses 0..L−1 when given none. The choice is stored in the model's
config (``dp_audit_prefix_positions``), so a saved base model reloads with the positions it was
trained with; a checkpoint without the key gets PEFT's behaviour (``"shifted"``).
"""

from __future__ import annotations

import inspect
from typing import Any


POSITIONS_KEY = "dp_audit_prefix_positions"
POSITIONS = ("text", "shifted")


def enable_prefix_tuning(model: Any, *, positions: str | None = None, prefix_layers: int | None = None) -> Any:
    """Make a BERT-style model (transformers 5) accept PEFT's prefix; ``positions`` as above
    (``None``: what the model's config says, else ``"shifted"``). ``prefix_layers = k > 0``: the
    prefix goes to the top k encoder layers only (dp_audit.prefix_layers; the PEFT config must then
    have ``num_layers = k``); ``None``: what the config says (a reloaded run), else every layer."""
    if positions is not None:
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        setattr(model.config, POSITIONS_KEY, positions)
    from dp_audit.prefix_layers import LAYERS_KEY, route_prefix_to_top_

    k = prefix_layers if prefix_layers is not None else int(getattr(model.config, LAYERS_KEY, 0) or 0)
    if k:
        route_prefix_to_top_(model, k)
    params = inspect.signature(model.forward).parameters
    if "past_key_values" in params:
        return model
    base_cls = getattr(model, "_dp_audit_base_cls", type(model))

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
        if past_key_values is not None and getattr(self.config, POSITIONS_KEY, "shifted") == "text":
            kwargs["position_ids"] = _text_positions(kwargs.get("position_ids"), past_key_values,
                                                     input_ids if input_ids is not None else kwargs.get("inputs_embeds"),
                                                     attention_mask=attention_mask, config=self.config)
        return base_cls.forward(self, input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values, **kwargs)

    model.__class__ = type(base_cls.__name__, (base_cls,), {"forward": forward, "__module__": base_cls.__module__})
    model._dp_audit_base_cls = base_cls
    return model


def _cache_length(cache: Any) -> int:
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])  # legacy tuple of (key, value) per layer: (B, heads, T, d)


# RoBERTa-style models number real tokens padding_idx + 1, padding_idx + 2, ... (pads: padding_idx)
PADDED_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xmod")


def _text_positions(position_ids: Any, cache: Any, inputs: Any, *, attention_mask: Any = None,
                    config: Any = None) -> Any:
    import torch

    if position_ids is not None:
        return (position_ids - _cache_length(cache)).contiguous()
    batch, length = inputs.shape[0], inputs.shape[1]
    if getattr(config, "model_type", "") in PADDED_POSITION_MODELS and inputs.dim() == 2:
        pad = int(config.pad_token_id or 0)
        mask = (inputs != pad).long()  # (PEFT extends attention_mask by the prefix: not used here)
        return (torch.cumsum(mask, dim=1) * mask + pad).contiguous()
    return torch.arange(length, device=inputs.device).unsqueeze(0).expand(batch, -1).contiguous()


def quiet_transformers() -> None:
    """Silence transformers' per-call progress bars and info logs (dp-audit prints its own)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass
