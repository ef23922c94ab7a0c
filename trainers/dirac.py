"""Dirac gradient canaries inside a DP-SGD run (Nasr et al. 2023; Steinke, Nasr & Jagielski 2023).

``canaries.gradient = m``: m canaries, each a member with probability 1/2 (:func:`dp_audit.dirac.membership`).
A canary is an example whose per-sample gradient is ``C · e_i``: norm exactly C (the clip norm),
all of it on its own coordinate i. The coordinates are entries of position-embedding rows
``>= data.max_length``: no input ever has such a position, so every real per-sample gradient is
exactly 0 there (and the model's outputs never read them).

At every step each member canary joins the Poisson batch with the same rate q as the real
examples, drawn from the run's secret sampling generator (the DPDataLoader's). Its gradient is
appended to Opacus' per-sample gradients after the backward pass and before the optimizer's
clipping, so the clipped sum, the noise and the accountant hook are exactly DP-SGD's: the
canaries are examples like any other and the claim covers them unchanged. Non-members are never
added.

Many canaries (m = 10⁴ … 10⁵, issue 17 leftovers): appending one dense per-sample row per included
canary costs k × numel floats per step (10¹⁰ at m = 10⁵), so above ``DENSE_LIMIT`` the canaries
are added *sparsely*: Opacus' ``clip_and_accumulate`` runs on the real examples' per-sample
gradients, then each included canary's clipped gradient is added to ``summed_grad`` on its
coordinate, with Opacus' own clip factor ``(max_grad_norm / (‖g‖ + 1e-6)).clamp(max=1)`` computed
from its norm ‖g‖ = C, before the noise, the scaling and the step hooks. It is the sum the dense
path gives (up to the order of the float additions; tested), so clipping, noise and accounting
are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from dp_audit import dirac
from dp_audit.errors import UsageError

DENSE_LIMIT = 1 << 24  # floats of appended per-sample canary rows per step (64 MB); above: sparse


@dataclass(frozen=True)
class DiracSlot:
    """Where the canary coordinates live: the parameter, its name and the usable flat indices."""

    name: str
    param: torch.nn.Parameter
    first_unused_row: int
    where: str


def position_slot(model, *, max_length: int) -> DiracSlot:
    """The position-embedding rows no input uses (rows ``max_length ..``)."""
    found = [(n, p) for n, p in model.named_parameters() if n.endswith("embeddings.position_embeddings.weight")]
    if len(found) != 1:
        raise UsageError("canaries.gradient needs a model with one position-embedding table "
                         "(a BERT-style 'embeddings.position_embeddings')")
    name, param = found[0]
    if not param.requires_grad:
        raise UsageError(f"canaries.gradient: {name} is frozen; Dirac canaries need full fine-tuning")
    return DiracSlot(name=name, param=param, first_unused_row=int(max_length),
                     where=f"{name} rows >= data.max_length = {max_length} (no input has those positions)")


class DiracCanaries:
    """m Dirac gradient canaries of one DP-SGD run (see the module docstring)."""

    def __init__(self, slot: DiracSlot, *, m: int, norm: float, sample_rate: float, seed: int):
        rows, cols = slot.param.shape
        free = (rows - slot.first_unused_row) * cols
        if m > free:
            raise UsageError(f"canaries.gradient = {m} needs {m} unused coordinates; {slot.name} has {free} "
                             f"(rows {slot.first_unused_row}..{rows - 1}): lower m or data.max_length, or raise "
                             "model.max_position_embeddings")
        self.slot, self.norm, self.sample_rate, self.seed = slot, float(norm), float(sample_rate), int(seed)
        self.index = slot.first_unused_row * cols + np.arange(m, dtype=np.int64)
        self.member = dirac.membership(m, seed=seed)
        self._member_index = torch.as_tensor(self.index[self.member])
        self.w0 = slot.param.detach().clone()  # the initial weights: read before the first step
        self.included = 0  # canary inclusions over the run (a statistic of the secret batches: not released)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """Flat indices of the member canaries in this step's batch: each independently with
        probability q, from ``generator`` (the secret sampling generator)."""
        keep = torch.rand(self._member_index.numel(), generator=generator) < self.sample_rate
        return self._member_index[keep]

    def add_per_sample_gradients(self, params, idx: torch.Tensor, *, batch_size: int) -> None:
        """Append one per-sample gradient row per included canary to every parameter's
        ``grad_sample``: ``norm · e_idx`` on the slot's parameter, zero on every other."""
        k = int(idx.numel())
        if k == 0:
            return
        for p in params:
            gs = getattr(p, "grad_sample", None)
            if gs is None:
                gs = p.new_zeros((batch_size, *p.shape))
            elif isinstance(gs, list):
                gs = torch.cat(gs, dim=0)
            rows = p.new_zeros((k, p.numel()))
            if p is self.slot.param:
                rows[torch.arange(k), idx] = self.norm
            p.grad_sample = torch.cat([gs, rows.view(k, *p.shape)], dim=0)
        self.included += k

    def dense(self) -> bool:
        """Whether the member canaries fit as appended dense per-sample rows (``DENSE_LIMIT``)."""
        return int(self._member_index.numel()) * int(self.slot.param.numel()) <= DENSE_LIMIT

    def hook(self, params, generator: torch.Generator, optimizer=None):
        """The ``after_backward(step, batch_size)`` callback of :func:`run_steps`. With
        ``optimizer`` (the DPOptimizer) and more canaries than ``DENSE_LIMIT`` allows, the
        canaries are added sparsely after Opacus' clipping (module docstring)."""
        if optimizer is None or self.dense():
            def after_backward(step: int, batch_size: int) -> None:
                self.add_per_sample_gradients(params, self.draw(generator), batch_size=batch_size)
            return after_backward
        self.attach_sparse(optimizer)

        def after_backward_sparse(step: int, batch_size: int) -> None:
            self._pending = self.draw(generator)
            self.included += int(self._pending.numel())
        return after_backward_sparse

    def clipped_contribution(self, optimizer, idx: torch.Tensor) -> torch.Tensor:
        """Σ over the canaries ``idx`` of their clipped per-sample gradients, shaped like the slot's
        parameter: Opacus' clip factor of a row of norm C, times C, on each canary's coordinate."""
        p = self.slot.param
        norm = torch.tensor(self.norm, dtype=p.dtype)  # the per-sample norm of C·e_i (one non-zero entry)
        factor = (optimizer.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)  # Opacus' expression
        out = torch.zeros(p.numel(), dtype=p.dtype)
        out.index_add_(0, idx.to(torch.long), (factor * norm).expand(int(idx.numel())).to(p.dtype))
        return out.view_as(p)

    def attach_sparse(self, optimizer) -> None:
        """Wrap the DPOptimizer's ``clip_and_accumulate``: the real examples are clipped and summed
        by Opacus, then the pending canaries' clipped gradients are added to ``summed_grad``."""
        inner = optimizer.clip_and_accumulate
        self._pending = None

        def clip_and_accumulate() -> None:
            inner()
            idx, self._pending = self._pending, None
            if idx is None or idx.numel() == 0:
                return
            p = self.slot.param
            add = self.clipped_contribution(optimizer, idx).to(p.device)
            p.summed_grad = add if p.summed_grad is None else p.summed_grad + add

        optimizer.clip_and_accumulate = clip_and_accumulate

    def files(self) -> dict[str, bytes]:
        """The run-directory artifacts: the record and w_0 (both hashed by the manifest)."""
        from dp_audit.io import dumps_json

        rec = dirac.record(parameter=self.slot.name, shape=tuple(self.slot.param.shape), norm=self.norm,
                           sample_rate=self.sample_rate, index=self.index, member=self.member, seed=self.seed,
                           where=self.slot.where)
        return {dirac.RECORD: dumps_json(rec).encode("utf-8"),
                dirac.W0: save_safetensors({"w0": self.w0.contiguous()})}

    def ledger_entry(self) -> dict:
        return {"kind": dirac.KIND, "m": int(self.index.size), "members": int(self.member.sum()),
                "parameter": self.slot.name, "sensitivity": self.norm, "sample_rate": self.sample_rate,
                "covered_by_claim": True,
                "note": "examples with per-sample gradient C·e_i, Poisson-sampled at q from the secret sampling "
                        "generator, clipped and noised with the batch: the claim covers them as examples"}
