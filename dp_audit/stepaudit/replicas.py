"""k-step DP-SGD trials batched over replicas: n independent runs of k real Opacus steps at once.

A DP-SGD step is not linear in its state (every example's gradient depends on P), so k steps
cannot be batched by reusing one noise-free step as :meth:`OpacusStep.batched` does for one step.
Instead :class:`ReplicaSteps` runs n replicas in one model (:class:`~dp_audit.stepaudit.toy.ToyPrefixModel`
with ``replicas = n``: n stacked copies of P, each example of the batch repeated once per replica
and pointed at its replica's rows) through the same :class:`~dp_audit.stepaudit.opacus_step.OpacusStep`
(Opacus ``GradSampleModule`` + ``DPOptimizer``). Each example's gradient lies on its replica's
rows only, so its per-example norm, its clipping and its share of the sum are those of the
replica alone; the noise is drawn independently for every entry (std σC, Opacus'
``_generate_noise``) and the sum is divided by the expected batch size of *one* replica (the
``mean`` loss reduction multiplies the per-example gradients back by the whole batch size). So
each replica takes exactly a DP-SGD step of its own; the state of each evolves with its own noise.

Valid only for plain DP-SGD steps: DP-Flat's AWP computes ‖P‖ and ‖∇L‖ over the whole parameter,
which would mix replicas (those constructions run their k-step trials unbatched). The per-example
gradient of an embedding is dense in its rows, so memory grows like n²; ``max_replicas`` (default
128) caps the replicas per Opacus call. Tests check the distribution against unbatched trials.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from dp_audit.trainers.modeling import INPUT_KEYS

MAX_REPLICAS = 128


class ReplicaSteps:
    """``batched_steps_fn(state, batch, generator, n, k)`` of a plain DP-SGD step on a toy model."""

    def __init__(self, examples: Sequence[Any], *, tokens: int, width: int, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: int, lr: float = 1.0, max_replicas: int = MAX_REPLICAS):
        self.examples, self.tokens, self.width = list(examples), int(tokens), int(width)
        self.options = {"noise_multiplier": float(noise_multiplier), "max_grad_norm": float(max_grad_norm),
                        "expected_batch_size": int(expected_batch_size), "lr": float(lr)}
        self.max_replicas = int(max_replicas)
        self._runners: dict[int, Any] = {}

    def _runner(self, m: int):
        from dp_audit.stepaudit.opacus_step import OpacusStep
        from dp_audit.stepaudit.toy import ToyPrefixModel

        if m not in self._runners:
            model = ToyPrefixModel(self.examples, tokens=self.tokens, width=self.width, replicas=m)
            self._runners[m] = OpacusStep(model, **self.options)
        return self._runners[m]

    def _chunk(self, state: dict[str, Any], batch: dict[str, torch.Tensor], generator: torch.Generator, m: int,
               steps: int) -> torch.Tensor:
        runner = self._runner(m)
        b = int(batch["labels"].shape[0])
        rb = {k: batch[k].repeat(m, 1) for k in INPUT_KEYS}
        rb["position_ids"] = torch.arange(m).repeat_interleave(b).view(m * b, 1)
        rb["labels"] = batch["labels"].repeat(m)
        st = {"prefix": state["prefix"].repeat(m, 1), "previous_release": None}
        total = None
        for _ in range(steps):
            r = runner.step(st, rb, generator)
            total = r.clone() if total is None else total + r
            st = runner.advance(st, r)
        return total.view(m, -1)

    def __call__(self, state: dict[str, Any], batch: dict[str, torch.Tensor], generator: torch.Generator, n: int,
                 steps: int) -> torch.Tensor:
        if state.get("previous_release") is not None:
            raise ValueError("ReplicaSteps runs plain DP-SGD steps: the state has no previous release")
        parts = [self._chunk(state, batch, generator, min(self.max_replicas, n - s), steps)
                 for s in range(0, n, self.max_replicas)]
        return torch.cat(parts)


__all__ = ["MAX_REPLICAS", "ReplicaSteps"]
