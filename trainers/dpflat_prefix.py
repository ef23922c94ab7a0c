"""The PEFT prefix of a sequence classifier, as DP-Flat sees it.

Layout (PEFT ``PeftModel.get_prompt``, prefix tuning without projection): the trainable matrix
``prompt_encoder.default.embedding.weight`` has shape (num_virtual_tokens, num_layers·2·hidden);
its last dim is viewed as (num_layers·2, heads, head_dim), permuted to put the 2L axis first and
split in pairs, so layer l's key is columns [2l·h, (2l+1)·h) and its value [(2l+1)·h, (2l+2)·h).

:class:`PrefixHook` is a forward hook on the prefix encoder. Its output, one copy of the prefix
per example (B, T, D), is where DP-Flat acts:
- ``mask`` multiplies it by a 0/1 column mask: a removed layer's key/value prefix is zero *and*
  its gradient is zero by the chain rule, also for Opacus' per-sample gradients (computed from
  the backprops reaching the embedding module), so removed layers get no data gradient;
- ``offset`` adds a per-example perturbation V (B, T, D): the clipped term of example i is
  evaluated at P + v_i (per-example AWP);
- ``capture`` keeps the output so that ``torch.autograd.grad(Σ_i ℓ_i, captured)`` gives every
  example's raw gradient with respect to its own prefix copy in one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefixLayout:
    num_virtual_tokens: int
    num_layers: int
    hidden: int

    @property
    def width(self) -> int:
        return self.num_layers * 2 * self.hidden

    def key_slice(self, layer: int) -> slice:
        self._check(layer)
        return slice(2 * layer * self.hidden, (2 * layer + 1) * self.hidden)

    def value_slice(self, layer: int) -> slice:
        self._check(layer)
        return slice((2 * layer + 1) * self.hidden, (2 * layer + 2) * self.hidden)

    def layer_slice(self, layer: int) -> slice:
        """Key and value columns of ``layer`` (they are adjacent)."""
        self._check(layer)
        return slice(2 * layer * self.hidden, (2 * layer + 2) * self.hidden)

    def mask(self, removed: list[int] | tuple[int, ...], *, dtype=torch.float32) -> torch.Tensor:
        """A (width,) 0/1 vector: 0 on the key/value columns of the removed layers."""
        m = torch.ones(self.width, dtype=dtype)
        for layer in removed:
            m[self.layer_slice(layer)] = 0
        return m

    def _check(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.num_layers - 1}")


def peft_model_of(model):
    """The PeftModel inside an Opacus GradSampleModule (or the model itself)."""
    return model._module if hasattr(model, "_module") else model


def prefix_encoder(model) -> torch.nn.Module:
    pm = peft_model_of(model)
    return pm.prompt_encoder[pm.active_adapter]


def prefix_weight(model) -> torch.nn.Parameter:
    return prefix_encoder(model).embedding.weight


def layout_of(model) -> PrefixLayout:
    pm = peft_model_of(model)
    cfg = pm.peft_config[pm.active_adapter]
    if getattr(cfg, "prefix_projection", False):
        raise ValueError("DP-Flat expects prefix tuning without reparametrisation (prefix_projection=False)")
    w = prefix_weight(model)
    layout = PrefixLayout(num_virtual_tokens=int(cfg.num_virtual_tokens), num_layers=int(cfg.num_layers),
                          hidden=int(cfg.token_dim))
    if tuple(w.shape) != (layout.num_virtual_tokens, layout.width):
        raise ValueError(f"unexpected prefix shape {tuple(w.shape)} for {layout}")
    return layout


class PrefixHook:
    """Forward hook on the prefix encoder (see the module docstring)."""

    def __init__(self, model):
        self.mask: torch.Tensor | None = None
        self.offset: torch.Tensor | None = None
        self.capture = False
        self.captured: torch.Tensor | None = None
        self._handle = prefix_encoder(model).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        out = output
        if self.offset is not None:
            if self.offset.shape[0] != out.shape[0]:
                raise RuntimeError(f"per-example prefix offset for {self.offset.shape[0]} examples, "
                                   f"batch has {out.shape[0]}")
            out = out + self.offset
        if self.mask is not None:
            out = out * self.mask
        if self.capture:
            self.captured = out
        return out

    def remove(self) -> None:
        self._handle.remove()


__all__ = ["PrefixHook", "PrefixLayout", "layout_of", "peft_model_of", "prefix_encoder", "prefix_weight"]
