"""``tuning = "head"`` with a frozen body: compute the body's outputs once per distinct input.

With only the classification head trainable, the body (embeddings + encoder + pooler) is a fixed
function of the input. :func:`cache_frozen_body_` replaces the body's ``forward`` on this model
instance (the weights, their names and ``save_pretrained`` are untouched) by a lookup: each input
row (ids, mask, token types, positions) is run through the body once, in eval mode and without
gradients, and its outputs are kept in a process-wide store shared by every model built from the
same backbone (the demo's and the benchmarks' runs then pay for the body once). Eval mode is the
frozen-feature-extractor convention, and it is what evaluation and the audits (which reload the
saved model) compute, so training, evaluation and audit see the same features. MiniLM on 2 cores:
a DP-SGD head step goes from one encoder forward (~1 s at batch 64) to milliseconds.

``tuning = "prefix"`` with ``model.prefix_layers = k`` (dp_audit.prefix_layers): the prefix sits on
the top k encoder layers, and the bottom (embeddings + the layers below) is the same kind of fixed
function of the input. :func:`cache_bottom_layers_` routes it through the same store (eval mode, no
gradients, keyed by the bottom's weights, its depth and each row's ids, mask, token types and
positions), so a prefix step runs only the top k layers. The store lives in the process only: it
holds frozen features of private inputs, is never written or released, and DP is unchanged since
the bottom is a fixed public function (docs/trainers.md, "Prefix on the top layers").
"""

from __future__ import annotations

from typing import Any

import torch

_STORE: dict[tuple[str, bytes], tuple[torch.Tensor, ...]] = {}
_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def clear() -> None:
    _STORE.clear()


def body_fingerprint(body: torch.nn.Module) -> str:
    """A cheap identity of the frozen weights (so two bodies that differ never share features)."""
    with torch.no_grad():
        parts = [f"{n}:{tuple(p.shape)}:{float(p.double().sum()):.10e}" for n, p in body.named_parameters()]
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class _WeightsKey:
    """``prefix`` + the fingerprint of ``module``'s weights, recomputed whenever a weight changed
    in place or was replaced (its version counter or storage moved), so features computed with
    the old weights are never served for the new ones."""

    def __init__(self, module: torch.nn.Module, prefix: str = ""):
        self.module, self.prefix, self.state, self.key = module, prefix, None, ""

    def __call__(self) -> str:
        state = tuple((p.data_ptr(), p._version) for p in self.module.parameters())
        if state != self.state:
            self.key, self.state = f"{self.prefix}{body_fingerprint(self.module)}", state
        return self.key


def cache_frozen_body_(model: Any) -> bool:
    """Route ``model``'s body through the store. Returns False (nothing done) when the model has no
    separate body or any body parameter is trainable."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(body, torch.nn.Module) or any(p.requires_grad for p in body.parameters()):
        return False
    original = body.forward
    weights_key = _WeightsKey(body)

    def forward(input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **kwargs):
        if input_ids is None or any(v is not None and v is not False for k, v in kwargs.items()
                                    if k not in ("return_dict",)):
            return original(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, **kwargs)
        def compute(sub: dict[str, Any]) -> tuple:
            was = body.training
            body.eval()
            with torch.no_grad():
                out = original(**{k: v for k, v in sub.items() if v is not None}, return_dict=True)
            body.train(was)
            return out.last_hidden_state, getattr(out, "pooler_output", None)

        got = _cached_rows(weights_key(), compute, input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, position_ids=position_ids)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        hidden = torch.stack([g[0] for g in got])
        pooled = torch.stack([g[1] for g in got]) if got[0][1] is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    body.forward = forward
    return True


def cache_bottom_layers_(model: Any) -> bool:
    """Route the frozen bottom of a top-layer prefix model (``model``: the classifier under PEFT,
    already routed by dp_audit.prefix_layers.route_prefix_to_top_) through the store. Returns
    False when the model is not routed or a bottom parameter is trainable."""
    from dp_audit.prefix_layers import body_of, bottom_modules, compute_bottom

    body = body_of(model)
    offset = getattr(body, "_dp_audit_prefix_offset", None)
    if offset is None:
        return False
    modules = torch.nn.ModuleList(bottom_modules(body, offset))
    if any(p.requires_grad for p in modules.parameters()):
        return False
    weights_key = _WeightsKey(modules, f"bottom{offset}:")

    def bottom(input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        got = _cached_rows(weights_key(), lambda sub: (compute_bottom(body, offset, **sub),), input_ids=input_ids,
                           attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids)
        return torch.stack([g[0] for g in got])

    body._dp_audit_bottom = bottom
    return True


def _cached_rows(key: Any, compute: Any, **given: Any) -> list[tuple]:
    """The stored outputs of each row of ``given`` under weights ``key``: rows not stored yet are
    computed together by ``compute(sub_batch) -> tuple of (n, ...) tensors (or None)`` and stored."""
    rows = _row_keys(given, given["input_ids"].shape[0])
    missing = [i for i, r in enumerate(rows) if (key, r) not in _STORE]
    if missing:
        idx = torch.as_tensor(missing)
        fields = compute({k: (v[idx] if v is not None else None) for k, v in given.items()})
        for j, i in enumerate(missing):
            _STORE[(key, rows[i])] = tuple(f[j].clone() if f is not None else None for f in fields)
    return [_STORE[(key, r)] for r in rows]


def _row_keys(given: dict[str, Any], n: int) -> list[bytes]:
    cols = [given[k].reshape(n, -1).to(torch.int64) for k in _KEYS if given.get(k) is not None]
    flat = torch.cat(cols, dim=1).contiguous().numpy()
    return [flat[i].tobytes() for i in range(n)]
