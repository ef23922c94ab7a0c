"""Compatibility shims between transformers 5 and PEFT (imported lazily; pulls in torch).

transformers 5 renamed BERT's ``past_key_values`` argument to ``cache`` (the old name is still
accepted through a deprecation decorator), but PEFT 0.21 decides whether a model supports
prefix tuning by looking for ``past_key_values`` in ``forward``'s signature. ``enable_prefix_tuning``
gives such a model a subclass of the same name whose ``forward`` names ``past_key_values`` and
passes it on as ``cache`` (through ``**kwargs`` down to the encoder); weights, config and ``save_pretrained`` output are unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any


def enable_prefix_tuning(model: Any) -> Any:
    params = inspect.signature(model.forward).parameters
    if "past_key_values" in params:
        return model
    base_cls = type(model)

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
        return base_cls.forward(self, input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values, **kwargs)

    model.__class__ = type(base_cls.__name__, (base_cls,), {"forward": forward, "__module__": base_cls.__module__})
    return model


def quiet_transformers() -> None:
    """Silence transformers' per-call progress bars and info logs (dp-audit prints its own)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass
