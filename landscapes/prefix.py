"""Per-layer parameter groups of a PEFT prefix (prefix tuning without reparametrisation).

PEFT stores the prefix as one embedding matrix P of shape (num_virtual_tokens,
num_layers·2·token_dim). ``PeftModel.get_prompt`` views its last dimension as
(num_layers·2, heads, head_dim) and splits the 2L axis in pairs, so layer l's key prefix is the
columns [2l·h, (2l+1)·h) and its value prefix [(2l+1)·h, (2l+2)·h), h = token_dim (checked in
tests/test_landscapes_prefix.py against the past key/values PEFT actually builds). Encoder-decoder
models (num_transformer_submodules = 2) reuse the same columns for both stacks.
"""

from __future__ import annotations

import torch

from dp_audit.errors import UsageError
from dp_audit.landscapes.params import ParamGroup

PARTS = ("both", "key", "value")


def _peft(model):
    inner = getattr(model, "_module", model)  # an Opacus GradSampleModule wraps the PeftModel
    if not hasattr(inner, "prompt_encoder") or not hasattr(inner, "peft_config"):
        raise UsageError("per-layer prefix probes need a PEFT prefix-tuned model (no prompt_encoder found)")
    return inner


def prefix_parameter(model, *, adapter: str | None = None) -> tuple[str, torch.nn.Parameter]:
    """The name and parameter of the prefix embedding P."""
    pm = _peft(model)
    adapter = adapter or pm.active_adapter
    cfg = pm.peft_config[adapter]
    kind = getattr(cfg, "peft_type", None)
    if getattr(kind, "value", kind) != "PREFIX_TUNING":
        raise UsageError(f"adapter {adapter!r} is not prefix tuning ({cfg.peft_type})")
    if getattr(cfg, "prefix_projection", False):
        raise UsageError("per-layer prefix groups need prefix_projection=False (the layers of a reparametrised "
                         "prefix are not separate weights)")
    param = pm.prompt_encoder[adapter].embedding.weight
    name = next((n for n, p in pm.named_parameters() if p is param), f"prompt_encoder.{adapter}.embedding.weight")
    return name, param


def prefix_layer_groups(model, *, adapter: str | None = None, part: str = "both") -> list[ParamGroup]:
    """One :class:`ParamGroup` per transformer layer: its key and value prefix columns (``part``
    "both"), or only the key or only the value columns. Group names: ``prefix.layer{l}``."""
    if part not in PARTS:
        raise UsageError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    pm = _peft(model)
    name, param = prefix_parameter(model, adapter=adapter)
    cfg = pm.peft_config[adapter or pm.active_adapter]
    layers, h = int(cfg.num_layers), int(cfg.token_dim)
    if tuple(param.shape) != (int(cfg.num_virtual_tokens), layers * 2 * h):
        raise UsageError(f"unexpected prefix shape {tuple(param.shape)} for num_layers={layers}, token_dim={h}")
    groups = []
    for layer in range(layers):
        start = {"both": 2 * layer, "key": 2 * layer, "value": 2 * layer + 1}[part] * h
        stop = {"both": 2 * layer + 2, "key": 2 * layer + 1, "value": 2 * layer + 2}[part] * h
        mask = torch.zeros(param.shape[1], dtype=param.dtype, device=param.device)
        mask[start:stop] = 1
        groups.append(ParamGroup(name=f"prefix.layer{layer}", param_name=name, param=param, mask=mask))
    return groups


__all__ = ["PARTS", "prefix_layer_groups", "prefix_parameter"]
