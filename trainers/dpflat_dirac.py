"""Dirac gradient canaries in white-box DP-Flat (``canaries.gradient = m``; docs/whitebox.md).

**Where.** DP-Flat tunes a prefix, and every prefix entry is read by attention, so no coordinate
of the released prefix is free of real gradients; the backbone (and its position table) is
frozen. The canaries therefore get a dedicated *audit parameter* A of shape (1, m), initial value
0, that no input reads. It is appended to the DP optimizer's parameters (after the model's), so:

- every real example's per-sample gradient on A is exactly 0 (Opacus has no hook on A: the
  trainer writes those zero rows), so the real examples' norms and clipping are unchanged;
- the model's outputs never depend on A, so the prefix's training is unchanged;
- A is released with the prefix: Opacus clips, noises and scales its gradient with the batch's,
  and the accountant counts the same steps. Its final value is saved as ``dirac_wT.safetensors``
  (hashed, like ``dirac_w0.safetensors``): under the white-box threat model it is part of the
  released weights.

**Per step**, exactly as in DP-SGD (:mod:`dp_audit.trainers.dirac`): each member canary joins the
Poisson batch with the run's rate q, drawn from the secret sampling generator (the
DPDataLoader's); its per-sample gradient is ``C·e_i`` on A and 0 on every other parameter,
appended to Opacus' per-sample gradients before clipping (or, above ``DENSE_LIMIT``, added after
Opacus' clipping with Opacus' own clip factor). Non-members never enter.

**The non-private parts of DP-Flat** (a canary is an example whose per-sample gradient is C·e_i):

- *AWP, paper mode*: the micro-batch is drawn from the n real examples only, exactly as in a
  run without canaries. A canary's raw gradient on the prefix is 0, so it could add nothing to
  v's direction; letting it take a micro-batch place would only shrink the real micro-batch
  (the study's micro-batch is one example, and with 1000 canaries on 800 examples about a third
  of the logical batch would be canaries: a third of the AWP steps would get v = 0), which
  changes the paper mode that the study's other columns measure and gives the canaries' secret
  inclusion a channel into the prefix release. A's value never depends on v either way.
- *AWP, per-example*: a canary's own v_i would be 0 (zero prefix gradient) and its clipped term
  is C·e_i: nothing to do. *DP-SAT*: v is the released prefix gradient: unchanged.
- *Distillation, paper mode* (λ∇R weighted by the sum of the clipping coefficients): the
  canaries are not in that sum. Their per-sample gradient is C·e_i exactly; the regulariser is a
  term of the real examples' objective (:attr:`AuditSlotCanaries.real_rows`).
- *Selection prefix and teacher P_np* (trained on the private split): the canaries are left out.
  Those runs train prefixes only, where a canary's gradient is 0: it could only change a mean's
  denominator and which real examples share a mini-batch. Consequence (documented): the Dirac
  score, which reads A only, cannot see those components' leak at all.
"""

from __future__ import annotations

import torch
from safetensors.torch import save as save_safetensors

from dp_audit import dirac
from dp_audit.errors import UsageError
from dp_audit.trainers.dirac import DiracCanaries, DiracSlot

PARAMETER = "dirac_audit_slot"  # the record's parameter name (a DP optimizer parameter, not a model's)
TENSOR = "w"  # tensor name of the final value in dirac_wT.safetensors
WHERE = ("a dedicated audit parameter of shape (1, m) appended to the DP optimizer's parameters; no input reads "
         "it, so every real per-sample gradient on it is exactly 0 (DP-Flat tunes a prefix, all of which attention "
         "reads)")


class AuditSlotCanaries:
    """m Dirac gradient canaries of one DP-Flat run on their own audit parameter (module docstring).

    Per step: :meth:`draw` (in the step's ``before_step``), then :meth:`after_backward` (the ``after_backward`` of
    :func:`~dp_audit.trainers.dpsgd.run_steps`); :meth:`attach` once, on the DPOptimizer."""

    def __init__(self, *, m: int, norm: float, sample_rate: float, seed: int):
        if m < 1:
            raise UsageError(f"canaries.gradient must be >= 1 here, got {m}")
        self.param = torch.nn.Parameter(torch.zeros(1, int(m)))
        slot = DiracSlot(name=PARAMETER, param=self.param, first_unused_row=0, where=WHERE)
        self.canaries = DiracCanaries(slot, m=int(m), norm=norm, sample_rate=sample_rate, seed=seed)
        self.real_rows = 0  # real examples in this step's per-sample gradients (their rows come first)
        self._pending: torch.Tensor | None = None
        self._params: list[torch.nn.Parameter] = []
        self._generator: torch.Generator | None = None
        self._sparse = False

    def attach(self, optimizer, generator: torch.Generator) -> None:
        """Append :attr:`param` to the Opacus DPOptimizer ``optimizer`` as its last parameter group
        (the inner optimiser's defaults: same lr, same weight decay), so Opacus clips, noises and
        scales it with the batch (the privacy engine only accepts the model's parameters at
        ``make_private``, and A is deliberately not part of the model); ``generator``: the secret
        sampling generator of its data loader."""
        if any(p is self.param for p in optimizer.params):
            raise RuntimeError("the Dirac audit parameter is already attached")
        optimizer.original_optimizer.add_param_group({"params": [self.param]})
        self.param.summed_grad = None  # what DPOptimizer.__init__ sets on each of its parameters
        if optimizer.params[-1] is not self.param:
            raise RuntimeError("the DP optimizer does not hold the Dirac audit parameter last")
        self._params, self._generator = list(optimizer.params), generator
        self._sparse = not self.canaries.dense()
        if self._sparse:
            self.canaries.attach_sparse(optimizer)

    def draw(self) -> int:
        """This step's included member canaries (rate q, secret generator); returns how many."""
        if self._generator is None:
            raise RuntimeError("AuditSlotCanaries.attach must run before the first step")
        self._pending = self.canaries.draw(self._generator)
        return int(self._pending.numel())

    def after_backward(self, step: int, batch_size: int) -> None:
        """Zero per-sample rows on A for the ``batch_size`` real examples, then the canaries'."""
        idx, self._pending = self._pending, None
        if idx is None:
            raise RuntimeError("Dirac canaries: after_backward without draw (the step's canaries were never sampled)")
        self.real_rows = int(batch_size)
        p = self.param
        if getattr(p, "grad_sample", None) is None:  # noise_only_step already set (0, ...) rows
            p.grad_sample = p.new_zeros((int(batch_size), *p.shape))
        if self._sparse:
            self.canaries._pending = idx
            self.canaries.included += int(idx.numel())
        else:
            self.canaries.add_per_sample_gradients(self._params, idx, batch_size=int(batch_size))

    @property
    def included(self) -> int:
        return self.canaries.included

    def files(self) -> dict[str, bytes]:
        """The record, w_0 and the final value of A (all hashed by the manifest)."""
        from dp_audit.io import dumps_json

        c = self.canaries
        rec = dirac.record(parameter=PARAMETER, shape=tuple(self.param.shape), norm=c.norm, sample_rate=c.sample_rate,
                           index=c.index, member=c.member, seed=c.seed, where=WHERE,
                           final={"file": dirac.WT, "tensor": TENSOR})
        return {dirac.RECORD: dumps_json(rec).encode("utf-8"),
                dirac.W0: save_safetensors({"w0": c.w0.contiguous()}),
                dirac.WT: save_safetensors({TENSOR: self.param.detach().clone().contiguous()})}

    def ledger_entry(self) -> dict:
        return {**self.canaries.ledger_entry(), "parameter": PARAMETER,
                "note": "examples with per-sample gradient C·e_i on a dedicated audit parameter no input reads, "
                        "Poisson-sampled at q from the secret sampling generator, clipped and noised with the batch "
                        "(the claim covers them as examples); they are left out of the AWP micro-batch, the "
                        "distillation coefficients, the selection prefix and the teacher (zero prefix gradient): the "
                        "prefix release is distributed as in the run without them"}


__all__ = ["AuditSlotCanaries", "PARAMETER", "TENSOR"]
