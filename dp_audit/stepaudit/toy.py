"""A small synthetic "prefix-like" classifier that the real DP-Flat, DP-SGD and DP-ZO code paths
accept (the auditor's choice of model: DP must hold for every model and data set).

It has the PEFT layout that :mod:`dp_audit.trainers.dpflat_prefix` reads: ``prompt_encoder``
(a ModuleDict keyed by ``active_adapter``) whose ``embedding`` (an ``nn.Embedding`` of shape
(T, D)) is the trainable prefix P, and whose forward output, one copy of P per example (B, T, D),
is where :class:`~dp_audit.trainers.dpflat_prefix.PrefixHook` acts. Opacus computes per-example
gradients of the embedding from that output, exactly as for the real prefix-tuned transformer.

An example is an integer id (``input_ids[:, 0]``) into fixed buffers; with p the example's
flattened prefix copy, its logit is

    z(p) = ⟨a, p⟩ + c·|⟨w, p⟩ − t|,      logits = (0, z),  loss = cross-entropy(logits, label).

The linear part gives a constant-direction gradient (a "gradient canary"); the kink part gives a
gradient ±c·w/2 whose sign flips when p crosses the hyperplane ⟨w, p⟩ = t: an example whose clipped
gradient changes sign under a tiny perturbation of P (what AWP's v is).

``replicas = n`` > 1 stacks n independent copies of P (rows r·T … r·T + T − 1 of the embedding are
replica r's P); an example of replica r carries r in ``position_ids[:, 0]``. An example's gradient
then lies on its replica's rows only, so Opacus' per-example clipping, its noise (independent on
every entry) and SGD act on each replica exactly as on a model of its own: n DP-SGD steps in one
(see :mod:`dp_audit.stepaudit.replicas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch



@dataclass(frozen=True)
class ToyOutput:
    logits: torch.Tensor


@dataclass(frozen=True)
class ToyExample:
    """z(p) = ⟨linear, p⟩ + kink·|⟨kink_dir, p⟩ − kink_at|, with the given label."""

    label: int
    linear: tuple[float, ...] | None = None  # None: zero
    kink: float = 0.0
    kink_dir: tuple[float, ...] | None = None
    kink_at: float = 0.0


class ToyPrefixEncoder(torch.nn.Module):
    def __init__(self, tokens: int, width: int):
        super().__init__()
        # zeros, not the global RNG's init: every step loads its state into it anyway
        self.embedding = torch.nn.Embedding(tokens, width, _weight=torch.zeros(tokens, width))

    def forward(self, prefix_tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(prefix_tokens)


class ToyPrefixModel(torch.nn.Module):
    """See the module docstring. ``examples`` fixes the data the ids refer to."""

    def __init__(self, examples: Sequence[ToyExample], *, tokens: int = 1, width: int = 8, replicas: int = 1):
        super().__init__()
        dim = tokens * width
        self.tokens, self.width, self.replicas = tokens, width, int(replicas)
        self.prompt_encoder = torch.nn.ModuleDict({"default": ToyPrefixEncoder(self.replicas * tokens, width)})
        self.active_adapter = "default"

        def vec(v):
            if v is None:
                return torch.zeros(dim)
            t = torch.as_tensor(v, dtype=torch.float32)
            if t.numel() != dim:
                raise ValueError(f"example vector of length {t.numel()}, the prefix has {dim} entries")
            return t

        self.register_buffer("linear", torch.stack([vec(e.linear) for e in examples]))
        self.register_buffer("kink", torch.tensor([float(e.kink) for e in examples]))
        self.register_buffer("kink_dir", torch.stack([vec(e.kink_dir) for e in examples]))
        self.register_buffer("kink_at", torch.tensor([float(e.kink_at) for e in examples]))
        self.labels = [int(e.label) for e in examples]

    @property
    def prefix(self) -> torch.nn.Parameter:
        return self.prompt_encoder[self.active_adapter].embedding.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None) -> ToyOutput:
        b = input_ids.shape[0]
        tok = torch.arange(self.tokens, device=input_ids.device).unsqueeze(0).expand(b, self.tokens)
        if self.replicas > 1:
            tok = tok + self.tokens * position_ids[:, :1]
        p = self.prompt_encoder[self.active_adapter](tok).reshape(b, -1)
        i = input_ids[:, 0]
        z = (self.linear[i] * p).sum(1) + self.kink[i] * ((self.kink_dir[i] * p).sum(1) - self.kink_at[i]).abs()
        return ToyOutput(logits=torch.stack([torch.zeros_like(z), z], dim=1))


def toy_batch(model: ToyPrefixModel, ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """A batch in the trainers' format (every key of INPUT_KEYS, plus labels) for example ids."""
    idx = torch.as_tensor(list(ids), dtype=torch.long)
    n = idx.numel()
    batch = {"input_ids": idx.view(n, 1), "attention_mask": torch.ones(n, 1, dtype=torch.long),
             "token_type_ids": torch.zeros(n, 1, dtype=torch.long), "position_ids": torch.zeros(n, 1, dtype=torch.long),
             "labels": torch.as_tensor([model.labels[i] for i in idx.tolist()], dtype=torch.long)}
    return batch


__all__ = ["ToyExample", "ToyOutput", "ToyPrefixEncoder", "ToyPrefixModel", "toy_batch"]
