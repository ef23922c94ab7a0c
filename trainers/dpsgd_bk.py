"""Book-keeping per-sample clipping (``privacy.grad_sample_mode = "bk"``): the clipped sum
Σ_i clip(∇ℓ_i, C) of DP-SGD in one backward pass (Bu, Mao & Xu, "Differentially private
optimization on large model at small cost", ICML 2023), with mixed ghost norms (Li et al. 2022,
Bu et al. 2022): per-sample gradients are never materialised for sequence inputs.

Why: Opacus' hooks materialise B per-sample copies of every weight (MiniLM, full fine-tuning:
B × 90 MB) and its ghost clipping runs a second backward pass; both cost a multiple of a
non-private step (docs/trainers.md, "Cost ratios"). Here:

1. forward hooks keep each trainable layer's input a and output y (one call per layer per forward);
2. ``torch.autograd.grad(Σ_i ℓ_i, [y...])`` back-propagates to the layer outputs only: the weight
   gradients are not formed (that is the pass a non-private backward spends on them);
3. per-sample norms per layer: Linear on (B, T, d) → ‖Σ_t g_t a_tᵀ‖² = ⟨g gᵀ, a aᵀ⟩ (ghost norm,
   B·T²·(d + p)) or from the materialised per-sample gradient when that is cheaper (B·d·p); 2-D
   inputs ‖g‖²‖a‖²; Embedding Σ_{t,s}[id_t = id_s] g_t·g_s (padding index excluded); LayerNorm
   per-sample gradients directly (B × d);
4. c_i = min(1, C/(‖∇ℓ_i‖ + 1e-6)) (Opacus' formula) and each weight's clipped sum
   Σ_i c_i ∇ℓ_i computed once, as the non-private weight gradient but with rows scaled by c_i.

The result is written to ``p.grad``: Opacus' fast-gradient-clipping optimizer (the one its ghost
mode uses) then adds N(0, σ²C²) and divides by the expected batch size; the accountant, the
loader and the ledger are Opacus' as for the other modes (trainers.dpsgd.make_private). A layer
type with trainable parameters other than Linear / Embedding / LayerNorm is refused (exit 2).
Tested against Opacus' per-sample gradients (tests/test_dpsgd_bk.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dp_audit.errors import UsageError

SUPPORTED = (nn.Linear, nn.Embedding, nn.LayerNorm)


@dataclass
class _Call:
    module: nn.Module
    inp: torch.Tensor
    out: torch.Tensor
    version: int
    inp_version: int = 0


class BookKeeping:
    """Forward hooks on every module owning trainable parameters of ``model``; :meth:`loss` wraps
    the per-example losses of a forward pass into a :class:`BKLoss` whose ``backward`` writes the
    clipped sum to ``p.grad``. ``clip_source`` has the clip bound C as ``max_grad_norm`` (the
    Opacus module, so an injected no-clip bug acts here too)."""

    def __init__(self, model: nn.Module, *, clip_source) -> None:
        self.clip_source = clip_source
        self.calls: list[_Call] = []
        self.handles = []
        self.modules: list[nn.Module] = []
        self.last_norms: torch.Tensor | None = None  # per-example gradient norms of the last backward
        owner: dict[int, str] = {}  # id(parameter) -> the module holding it
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            for p in own:  # a tied weight (an LM head tied to the embedding): its norm needs cross terms
                if id(p) in owner:
                    raise UsageError(f"privacy.grad_sample_mode = 'bk': a trainable weight is shared by {owner[id(p)]} "
                                     f"and {name} (tied weights); use grad_sample_mode = 'hooks'")
                owner[id(p)] = name
            if type(module) not in SUPPORTED:
                raise UsageError(f"privacy.grad_sample_mode = 'bk' supports Linear, Embedding and LayerNorm layers; "
                                 f"{name or 'the model'} ({type(module).__name__}) has trainable parameters: "
                                 "use grad_sample_mode = 'hooks' or 'ghost'")
            if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq
                                                     or module.sparse):
                raise UsageError(f"privacy.grad_sample_mode = 'bk': embedding {name} uses max_norm, "
                                 "scale_grad_by_freq or sparse gradients")
            self.modules.append(module)
            self.handles.append(module.register_forward_hook(self._record))
            for p in own:  # an ordinary loss.backward() would put the UNclipped gradient into p.grad,
                # which Opacus' optimizer would noise as if clipped: refuse it (bk writes p.grad itself)
                self.handles.append(p.register_post_accumulate_grad_hook(_refuse_plain_backward))

    def _record(self, module, inputs, output) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise UsageError(f"privacy.grad_sample_mode = 'bk': a {type(module).__name__} layer was called without "
                             "a positional input tensor; use 'hooks'")
        inp = inputs[0].detach()  # shares the version counter: an in-place change of the input shows
        self.calls.append(_Call(module=module, inp=inp, out=output, version=output._version, inp_version=inp._version))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.calls = []

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> "BKLoss":
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        calls, self.calls = self.calls, []
        return BKLoss(owner=self, per_example=losses, calls=calls)

    # ------------------------------------------------------------------ the backward pass

    def clipped_sum(self, per_example: torch.Tensor, calls: list[_Call]) -> torch.Tensor:
        """Write Σ_i c_i ∇ℓ_i to ``p.grad`` of every hooked parameter; returns the per-example
        gradient norms (before clipping)."""
        seen = [c.module for c in calls]
        if len(set(map(id, seen))) != len(seen):
            raise UsageError("privacy.grad_sample_mode = 'bk': a layer ran twice in one forward pass (shared "
                             "weights); use 'hooks'")
        n = per_example.shape[0]
        for c in calls:
            if c.out._version != c.version or c.inp._version != c.inp_version:
                raise UsageError(f"privacy.grad_sample_mode = 'bk': the output or input of {type(c.module).__name__} "
                                 "was modified in place after the layer ran; use 'hooks'")
            if c.out.dim() == 0 or c.out.shape[0] != n or c.inp.dim() == 0 or c.inp.shape[0] != n:
                # e.g. a (1, T) position-id buffer broadcast over the batch: its gradient is the whole
                # batch's, not one example's, so its norm cannot be split per example
                raise UsageError(f"privacy.grad_sample_mode = 'bk': layer {type(c.module).__name__} ran on a "
                                 f"batch of {tuple(c.inp.shape[:1])} rows for {n} examples (an input shared across "
                                 "the batch); pass per-example inputs or use 'hooks'")
        grads = torch.autograd.grad(per_example.sum(), [c.out for c in calls], allow_unused=True)
        with torch.no_grad():
            sq = torch.zeros(n, dtype=torch.float32)
            grams: dict = {}  # a aᵀ of an input shared by several layers (query, key, value): computed once
            small: list[dict] = []  # per-sample gradients of biases and LayerNorms: reused in the sum
            for c, g in zip(calls, grads):
                per = {}
                if g is not None:
                    sq += _norm_sq(c.module, c.inp, g, grams=grams, per_sample=per)
                small.append(per)
            grams.clear()
            norms = sq.sqrt()
            coef = (float(self.clip_source.max_grad_norm) / (norms + 1e-6)).clamp(max=1.0)
            for c, g, per in zip(calls, grads, small):
                for p, value in _weighted_sum(c.module, c.inp, g, coef, per_sample=per):
                    p.grad = value if p.grad is None else p.grad + value
            ran = {id(c.module) for c in calls}
            for module in self.modules:  # a trainable layer the forward never called: gradient 0
                if id(module) not in ran:
                    for p in module.parameters(recurse=False):
                        if p.requires_grad and p.grad is None:
                            p.grad = torch.zeros_like(p)
        return norms


def _refuse_plain_backward(param: torch.Tensor) -> None:
    param.grad = None
    raise RuntimeError("grad_sample_mode 'bk': a plain backward pass reached a trainable parameter; its "
                       "gradient would be unclipped. Use the loss returned by BookKeeping.loss (dp_criterion)")


@dataclass
class BKLoss:
    """What the criterion returns in ``bk`` mode: ``backward()`` runs the book-keeping pass,
    ``detach()`` is the mean loss (as a scalar tensor)."""

    owner: BookKeeping
    per_example: torch.Tensor
    calls: list

    def backward(self) -> None:
        self.owner.last_norms = self.owner.clipped_sum(self.per_example, self.calls)
        self.calls = []

    def detach(self) -> torch.Tensor:
        return self.per_example.detach().mean()


def _flat3(x: torch.Tensor) -> torch.Tensor:
    """(B, ..., k) → (B, T, k)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _gram(x3: torch.Tensor, grams: dict, *, source: torch.Tensor) -> torch.Tensor:
    """a aᵀ of ``x3``, cached under ``source``: the layer input held by the call record (alive for
    the whole pass, so its address is never reused by another input; a float32 copy of a bf16
    input is a temporary whose address could be)."""
    key = (source.data_ptr(), source.dtype, tuple(source.shape), tuple(source.stride()))
    if key not in grams:
        grams[key] = torch.bmm(x3, x3.transpose(1, 2))
    return grams[key]


def _norm_sq(module: nn.Module, inp: torch.Tensor, g: torch.Tensor, *, grams: dict,
             per_sample: dict) -> torch.Tensor:
    """Σ over ``module``'s trainable parameters of ‖∇_p ℓ_i‖², shape (B,). Small per-sample
    gradients (biases, LayerNorm) are kept in ``per_sample`` (id(parameter) → (B, ...)) for the sum."""
    n = g.shape[0]
    out = torch.zeros(n, dtype=torch.float32)
    # norms in float32 at least, whatever the model's dtype (a bf16/fp16 checkpoint loads as such):
    # a norm rounded down clips too little. No copy for a float32 model.
    g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
    source = inp
    if inp.is_floating_point() and inp.dtype in (torch.float16, torch.bfloat16):
        inp = inp.float()
    if isinstance(module, nn.Linear):
        bias = module.bias is not None and module.bias.requires_grad
        if g.dim() == 2:
            gg = (g * g).sum(1)
            if module.weight.requires_grad:
                out = out + gg * (inp * inp).sum(1)
            if bias:
                out = out + gg
                per_sample[id(module.bias)] = g
            return out
        g3, a3 = _flat3(g), _flat3(inp)
        if module.weight.requires_grad:
            t, d, p = a3.shape[1], a3.shape[2], g3.shape[2]
            if 2 * t * t <= d * p:  # ghost norm ⟨g gᵀ, a aᵀ⟩
                out = out + (torch.bmm(g3, g3.transpose(1, 2)) * _gram(a3, grams, source=source)).sum((1, 2))
            else:  # per-sample gradient (B, p, d)
                out = out + torch.bmm(g3.transpose(1, 2), a3).pow(2).sum((1, 2))
        if bias:
            gb = g3.sum(1)
            per_sample[id(module.bias)] = gb
            out = out + gb.pow(2).sum(1)
        return out.clamp(min=0)
    if isinstance(module, nn.Embedding):
        ids, g3 = inp.reshape(n, -1), _flat3(g)
        keep = torch.ones_like(ids, dtype=torch.bool) if module.padding_idx is None else ids != module.padding_idx
        same = (ids[:, :, None] == ids[:, None, :]) & keep[:, :, None] & keep[:, None, :]
        return (torch.bmm(g3, g3.transpose(1, 2)) * same).sum((1, 2)).clamp(min=0)
    if isinstance(module, nn.LayerNorm):
        gw, gb = _layernorm_per_sample(module, inp, g)
        for param, value in ((module.weight, gw), (module.bias, gb)):
            if value is not None:
                per_sample[id(param)] = value
                out = out + value.pow(2).sum(1)
        return out
    raise TypeError(type(module).__name__)


def _layernorm_per_sample(module: nn.LayerNorm, inp: torch.Tensor, g: torch.Tensor):
    n = g.shape[0]
    gw = gb = None
    if module.weight is not None and module.weight.requires_grad:
        xhat = nn.functional.layer_norm(inp, module.normalized_shape, eps=module.eps)
        gw = (g * xhat).reshape(n, -1, *module.normalized_shape).sum(1).reshape(n, -1)
    if module.bias is not None and module.bias.requires_grad:
        gb = g.reshape(n, -1, *module.normalized_shape).sum(1).reshape(n, -1)
    return gw, gb


def _scaled(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    return x * coef.view(x.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def _weighted_sum(module: nn.Module, inp: torch.Tensor, g: torch.Tensor | None, coef: torch.Tensor, *,
                  per_sample: dict):
    """(parameter, Σ_i c_i ∇_p ℓ_i) pairs of ``module``'s trainable parameters."""
    params = [p for p in module.parameters(recurse=False) if p.requires_grad]
    if g is None:  # the layer's output did not reach the loss
        return [(p, torch.zeros_like(p)) for p in params]
    out = []
    for p in params:  # biases and LayerNorm: from the per-sample gradients of the norm pass
        if id(p) in per_sample:
            ps = per_sample[id(p)]
            out.append((p, (coef.to(ps.dtype) @ ps.reshape(coef.shape[0], -1)).view_as(p).to(p.dtype)))
    if isinstance(module, nn.Linear) and module.weight.requires_grad:
        d, p_out = inp.shape[-1], g.shape[-1]
        if d <= p_out:  # scale the smaller of the two factors by c_i
            a2, g2 = _scaled(inp, coef).reshape(-1, d), g.reshape(-1, p_out)
        else:
            a2, g2 = inp.reshape(-1, d), _scaled(g, coef).reshape(-1, p_out)
        out.append((module.weight, g2.t().mm(a2.to(g2.dtype))))
    elif isinstance(module, nn.Embedding):
        ids, g2 = inp.reshape(-1), _scaled(g, coef).reshape(-1, g.shape[-1])
        if module.padding_idx is not None:
            g2 = g2 * (ids != module.padding_idx).unsqueeze(1).to(g2.dtype)
        out.append((module.weight, torch.zeros_like(module.weight).index_add_(0, ids, g2)))
    return out


__all__ = ["BKLoss", "BookKeeping", "SUPPORTED"]
