"""Which weights a probe moves, and the guarantee that it puts them back exactly.

- :func:`select_parameters` picks named parameters (trainable only by default, filtered by name
  patterns and/or transformer layer numbers);
- :class:`ParamGroup` is one parameter plus a 0/1 mask (built from a slice or given directly): the
  unit of per-layer probes on a PEFT prefix, whose layers share one embedding matrix;
- :func:`as_selection` turns either into the probes' common form, a tuple of :class:`Entry`;
- :func:`preserved` (a context manager) snapshots the selected tensors, the model's train/eval
  mode and ``requires_grad`` flags, and restores them bit-exactly on exit, also on exceptions;
  :func:`zero_group` zeroes a group for the duration of a block (DP-Flat's layer removal).

Probes never move weights by ``w += η·d`` followed by ``w -= η·d`` (floating point would not
return to w); they always write ``w0 + η·d`` from the snapshot and copy the snapshot back.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, Union

import torch

from dp_audit.errors import UsageError

NamedParams = Sequence[tuple[str, torch.nn.Parameter]]


def _layer_pattern(layer: int) -> re.Pattern:
    # BERT/RoBERTa "encoder.layer.3.", GPT-2 "h.3.", OPT/Llama "layers.3.", ViT "blocks.3."
    return re.compile(rf"(?:^|\.)(?:layer|layers|h|blocks?)\.{int(layer)}\.")


def select_parameters(model: torch.nn.Module, *, trainable_only: bool = True,
                      include: Sequence[str] | str | None = None,
                      layers: Sequence[int] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters of ``model`` to probe.

    ``trainable_only``: keep only ``requires_grad`` parameters (for a PEFT model: the adapter).
    ``include``: regular expressions (plain substrings work) searched in the parameter name; a
    parameter is kept when any matches. ``layers``: keep parameters of these transformer layers
    (names like ``encoder.layer.3.``, ``h.3.``, ``layers.3.``). Filters combine with AND.
    Raises :class:`UsageError` when nothing is selected.
    """
    if isinstance(include, str):
        include = [include]
    try:
        pats = [re.compile(p) for p in include] if include else None
    except re.error as exc:
        raise UsageError(f"bad parameter pattern in include={include!r}: {exc}") from None
    layer_pats = [_layer_pattern(layer) for layer in layers] if layers is not None else None
    out = []
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        if pats is not None and not any(pat.search(name) for pat in pats):
            continue
        if layer_pats is not None and not any(pat.search(name) for pat in layer_pats):
            continue
        out.append((name, p))
    if not out:
        raise UsageError(f"no parameters selected (trainable_only={trainable_only}, include={include!r}, "
                         f"layers={None if layers is None else list(layers)!r})")
    return out


@dataclass(frozen=True, eq=False)
class ParamGroup:
    """A part of one parameter: ``mask`` is a 0/1 tensor broadcastable to the parameter's shape."""

    name: str
    param_name: str
    param: torch.nn.Parameter
    mask: torch.Tensor

    def __post_init__(self) -> None:
        try:
            torch.broadcast_shapes(self.mask.shape, self.param.shape)
        except RuntimeError:
            raise ValueError(f"group {self.name!r}: mask shape {tuple(self.mask.shape)} does not broadcast to "
                             f"{tuple(self.param.shape)}") from None

    @classmethod
    def from_slice(cls, name: str, param_name: str, param: torch.nn.Parameter,
                   index: slice | tuple | int) -> "ParamGroup":
        """The group of ``param[index]`` (any basic-indexing expression)."""
        mask = torch.zeros_like(param, dtype=param.dtype, device=param.device)
        mask[index] = 1
        return cls(name=name, param_name=param_name, param=param, mask=mask)

    def full_mask(self) -> torch.Tensor:
        return torch.broadcast_to(self.mask.to(self.param.dtype), self.param.shape)

    @property
    def numel(self) -> int:
        return int(self.full_mask().count_nonzero())


@dataclass(frozen=True, eq=False)
class Entry:
    """One tensor a probe moves: a named parameter, optionally restricted by a mask."""

    name: str
    param: torch.nn.Parameter
    mask: torch.Tensor | None = None

    def masked(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.mask is None else t * self.mask.to(t.dtype)


Selection = tuple[Entry, ...]
SelectionLike = Union[NamedParams, ParamGroup, Sequence[ParamGroup], Sequence[Entry]]


def as_selection(params: SelectionLike) -> Selection:
    """Normalise named parameters, a group, or groups into a tuple of :class:`Entry`.

    Several groups on the same parameter are merged into one entry (their masks summed, clamped
    to 1), so every parameter appears once."""
    if isinstance(params, ParamGroup):
        params = [params]
    items = list(params)
    if not items:
        raise UsageError("empty parameter selection")
    out: dict[int, Entry] = {}
    for item in items:
        if isinstance(item, Entry):
            entry = item
        elif isinstance(item, ParamGroup):
            entry = Entry(name=item.param_name, param=item.param, mask=item.full_mask())
        else:
            name, p = item
            entry = Entry(name=str(name), param=p)
        key = id(entry.param)
        if key in out:
            prev = out[key]
            if prev.mask is None or entry.mask is None:
                entry = Entry(name=prev.name, param=prev.param)
            else:
                entry = Entry(name=prev.name, param=prev.param, mask=(prev.mask + entry.mask).clamp(max=1))
        out[key] = entry
    return tuple(out.values())


def n_selected(selection: Selection) -> int:
    """Number of scalar coordinates a probe moves."""
    return sum(int(e.param.numel() if e.mask is None else e.mask.count_nonzero()) for e in selection)


# ---------------------------------------------------------------------------------------------
# snapshot / restore


def snapshot(selection: Selection) -> list[torch.Tensor]:
    """Detached copies of the selected tensors."""
    return [e.param.detach().clone() for e in selection]


@torch.no_grad()
def restore(selection: Selection, saved: Sequence[torch.Tensor]) -> None:
    """Copy ``saved`` back into the selected tensors (bit-exact)."""
    for e, s in zip(selection, saved):
        e.param.copy_(s)


@torch.no_grad()
def set_offset(selection: Selection, base: Sequence[torch.Tensor], offset: Sequence[torch.Tensor],
               scale: float = 1.0) -> None:
    """Write ``base + scale·offset`` into the selected tensors (offsets already masked)."""
    for e, b, d in zip(selection, base, offset):
        torch.add(b, d.to(b.dtype), alpha=float(scale), out=e.param.data)


@contextlib.contextmanager
def preserved(model: torch.nn.Module | None, selection: SelectionLike) -> Iterator[list[torch.Tensor]]:
    """Snapshot the selected tensors (and the model's mode and ``requires_grad`` flags); restore
    them exactly on exit, exceptions included. Yields the snapshot (the base point w0)."""
    sel = selection if isinstance(selection, tuple) and all(isinstance(e, Entry) for e in selection) \
        else as_selection(selection)
    saved = snapshot(sel)
    flags = [e.param.requires_grad for e in sel]
    mode = None if model is None else model.training
    try:
        yield saved
    finally:
        restore(sel, saved)
        for e, f in zip(sel, flags):
            e.param.requires_grad_(f)
        if model is not None:
            model.train(mode)


@contextlib.contextmanager
def requiring_grad(selection: Selection) -> Iterator[None]:
    """Temporarily make every selected parameter require grad (frozen weights can be probed)."""
    flags = [e.param.requires_grad for e in selection]
    try:
        for e in selection:
            e.param.requires_grad_(True)
        yield
    finally:
        for e, f in zip(selection, flags):
            e.param.requires_grad_(f)


@contextlib.contextmanager
def zero_group(groups: ParamGroup | Iterable[ParamGroup]) -> Iterator[None]:
    """Zero the masked entries of one or more groups inside the block; restore them exactly after.

    This is DP-Flat's "removal" of a layer's prefix: its key and value prefix become zero while
    the attention mask still covers the virtual tokens (they are attended to with zero keys and
    values)."""
    groups = [groups] if isinstance(groups, ParamGroup) else list(groups)
    sel = as_selection(groups)
    with preserved(None, sel):
        with torch.no_grad():
            for e in sel:
                e.param.masked_fill_(e.mask.bool(), 0)
        yield


__all__ = ["Entry", "ParamGroup", "Selection", "SelectionLike", "as_selection", "n_selected", "preserved",
           "requiring_grad", "restore", "select_parameters", "set_offset", "snapshot", "zero_group"]
