"""Per-example evaluation protocol of the landscape probes (DESIGN.md §8).

An *evaluator* holds a fixed data split and measures a model on it:

- ``evaluator(model, indices=None) -> PerExample``: per-example losses (and 0/1 correctness when
  the task has labels), in eval mode under ``torch.no_grad``; ``indices`` restricts the evaluation
  to a subset of the split's examples (used by subsampled curves);
- ``evaluator.loss_terms(model, indices=None)``: an iterator of scalar tensors *with* autograd
  whose sum is the mean loss over the (selected) examples, one term per mini-batch, so gradients
  and Hessian-vector products can be accumulated batch by batch without holding every graph;
- ``evaluator.n``: the number of examples of the split.

Two implementations: :class:`ClassifierEvaluator` (Hugging Face sequence classifiers, PEFT-wrapped
prefix models included) and :class:`FunctionEvaluator` (any callable; the tests use a quadratic).
The gradient helpers :func:`mean_loss` and :func:`mean_loss_and_grad` sit on ``loss_terms``.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch

from dp_audit.errors import UsageError

_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, eq=False)
class PerExample:
    """Per-example results of one evaluation: ``losses`` (n,) float, ``correct`` (n,) bool or None."""

    losses: torch.Tensor
    correct: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.losses.dim() != 1:
            raise ValueError(f"per-example losses must be 1-D, got shape {tuple(self.losses.shape)}")
        if self.correct is not None and self.correct.shape != self.losses.shape:
            raise ValueError("correct and losses must have the same shape")

    @property
    def n(self) -> int:
        return int(self.losses.shape[0])

    def mean_loss(self) -> float:
        return float(self.losses.double().mean())

    def accuracy(self) -> float | None:
        return None if self.correct is None else float(self.correct.double().mean())


@runtime_checkable
class Evaluator(Protocol):
    """What the probes need from a data split (see the module docstring)."""

    @property
    def n(self) -> int: ...

    def __call__(self, model: torch.nn.Module, *, indices: torch.Tensor | None = None) -> PerExample: ...

    def loss_terms(self, model: torch.nn.Module, *, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]: ...


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put ``model`` in eval mode (no dropout) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_indices(indices: torch.Tensor | Sequence[int] | None, n: int) -> torch.Tensor | None:
    if indices is None:
        return None
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        raise UsageError("evaluation on an empty subset of examples")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise UsageError(f"example indices out of range 0..{n - 1}")
    return idx


# ---------------------------------------------------------------------------------------------
# Hugging Face sequence classifiers


class ClassifierEvaluator:
    """Cross-entropy and accuracy of a sequence classifier on fixed batches.

    ``batches``: dicts with ``input_ids``, ``attention_mask`` and ``labels`` tensors (and optionally
    ``token_type_ids``), right-padded as a tokenizer gives them. They are concatenated once (padded
    to a common length); each forward pass then trims the columns that are padding for every row
    of its mini-batch, so the logits equal those of the original batches. Works with plain
    ``*ForSequenceClassification`` models and with PEFT-wrapped ones (prefix tuning prepends its
    virtual tokens and extends the attention mask itself).
    """

    def __init__(self, batches: Sequence[Mapping[str, torch.Tensor]], *, batch_size: int | None = None) -> None:
        batches = list(batches)
        if not batches:
            raise UsageError("ClassifierEvaluator needs at least one batch")
        for i, b in enumerate(batches):
            for key in ("input_ids", "attention_mask", "labels"):
                if key not in b:
                    raise UsageError(f"batch {i} has no {key!r}")
        self.keys = tuple(k for k in _INPUT_KEYS if all(k in b for b in batches))
        length = max(int(b["input_ids"].shape[1]) for b in batches)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=0)

        self.inputs = {k: torch.cat([pad(torch.as_tensor(b[k])) for b in batches]) for k in self.keys}
        self.labels = torch.cat([torch.as_tensor(b["labels"]).reshape(-1) for b in batches]).long()
        if self.labels.shape[0] != self.inputs["input_ids"].shape[0]:
            raise UsageError("labels and input_ids have different numbers of rows")
        self.batch_size = int(batch_size or batches[0]["input_ids"].shape[0])
        if self.batch_size < 1:
            raise UsageError("batch_size must be >= 1")
        self._last: tuple[Any, list] | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def _batches(self, indices: torch.Tensor | None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        idx = torch.arange(self.n) if indices is None else indices
        for s in range(0, idx.numel(), self.batch_size):
            rows = idx[s:s + self.batch_size]
            mask = self.inputs["attention_mask"][rows]
            used = torch.nonzero(mask.any(dim=0)).flatten()
            width = int(used.max()) + 1 if used.numel() else 1
            yield {k: v[rows, :width] for k, v in self.inputs.items()}, self.labels[rows]

    def _logits(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()

    def _prepared(self, indices: torch.Tensor | Sequence[int] | None
                  ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """The mini-batches of ``indices``; the last subset's are kept, so a probe that evaluates
        the same subset at many points (one direction, every η) gathers it only once."""
        if indices is not None and self._last is not None and self._last[0] is indices:
            return self._last[1]
        prepared = list(self._batches(_check_indices(indices, self.n)))
        self._last = None if indices is None else (indices, prepared)
        return prepared

    def __call__(self, model: torch.nn.Module, *, indices: torch.Tensor | Sequence[int] | None = None) -> PerExample:
        losses, correct = [], []
        with torch.no_grad(), eval_mode(model):
            for inputs, y in self._prepared(indices):
                logits = self._logits(model, inputs).cpu()
                losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
                correct.append(logits.argmax(dim=-1) == y)
        return PerExample(losses=torch.cat(losses), correct=torch.cat(correct))

    def loss_terms(self, model: torch.nn.Module, *, indices: torch.Tensor | Sequence[int] | None = None
                   ) -> Iterator[torch.Tensor]:
        idx = _check_indices(indices, self.n)
        total = self.n if idx is None else idx.numel()
        with eval_mode(model), torch.enable_grad():
            for inputs, y in self._batches(idx):
                logits = self._logits(model, inputs)
                yield torch.nn.functional.cross_entropy(logits, y.to(logits.device), reduction="sum") / total


# ---------------------------------------------------------------------------------------------
# any callable


class FunctionEvaluator:
    """Wraps ``fn(model) -> losses`` (a (n,) tensor), ``(losses, correct)`` or a :class:`PerExample`.

    If ``fn`` takes an ``indices`` keyword it is passed on; otherwise every example is computed and
    the subset taken afterwards. ``fn`` must build its result from the model's parameters with
    ordinary torch operations so that gradients (and second derivatives) flow through it.
    """

    def __init__(self, fn: Callable[..., Any], *, n: int | None = None) -> None:
        self.fn = fn
        try:
            self._takes_indices = "indices" in inspect.signature(fn).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            self._takes_indices = False
        self._n = n

    def _raw(self, model: torch.nn.Module, idx: torch.Tensor | None) -> PerExample:
        out = self.fn(model, indices=idx) if self._takes_indices else self.fn(model)
        if isinstance(out, PerExample):
            res = out
        elif isinstance(out, tuple):
            res = PerExample(losses=torch.as_tensor(out[0]).reshape(-1),
                             correct=None if out[1] is None else torch.as_tensor(out[1]).reshape(-1).bool())
        else:
            res = PerExample(losses=torch.as_tensor(out).reshape(-1))
        if idx is not None and not self._takes_indices:
            res = PerExample(losses=res.losses[idx], correct=None if res.correct is None else res.correct[idx])
        return res

    @property
    def n(self) -> int:
        if self._n is None:
            raise UsageError("FunctionEvaluator needs n=... (the number of examples) for this probe")
        return self._n

    def _size(self, model: torch.nn.Module) -> int:
        if self._n is None:
            with torch.no_grad(), eval_mode(model):
                self._n = self._raw(model, None).n
        return self._n

    def __call__(self, model: torch.nn.Module, *, indices: torch.Tensor | Sequence[int] | None = None) -> PerExample:
        idx = _check_indices(indices, self._size(model))
        with torch.no_grad(), eval_mode(model):
            res = self._raw(model, idx)
        return PerExample(losses=res.losses.detach().cpu(),
                          correct=None if res.correct is None else res.correct.detach().cpu())

    def loss_terms(self, model: torch.nn.Module, *, indices: torch.Tensor | Sequence[int] | None = None
                   ) -> Iterator[torch.Tensor]:
        idx = _check_indices(indices, self._size(model))
        with eval_mode(model), torch.enable_grad():
            yield self._raw(model, idx).losses.mean()


# ---------------------------------------------------------------------------------------------
# gradient helpers (grad enabled, eval mode)


def mean_loss(model: torch.nn.Module, evaluator: Evaluator, *, indices: torch.Tensor | None = None) -> float:
    """The mean loss over the (selected) examples, without gradients."""
    return evaluator(model, indices=indices).mean_loss()


def mean_loss_and_grad(model: torch.nn.Module, evaluator: Evaluator, params: Sequence[torch.Tensor], *,
                       indices: torch.Tensor | None = None) -> tuple[float, list[torch.Tensor]]:
    """The mean loss and its gradient with respect to ``params`` (tensors that require grad),
    accumulated over the evaluator's mini-batches. Parameters not reached by the loss get zeros."""
    params = list(params)
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    for term in evaluator.loss_terms(model, indices=indices):
        gs = torch.autograd.grad(term, params, allow_unused=True)
        for acc, g in zip(grads, gs):
            if g is not None:
                acc.add_(g.detach())
        total += float(term.detach())
    return total, grads


__all__ = ["ClassifierEvaluator", "Evaluator", "FunctionEvaluator", "PerExample", "eval_mode", "mean_loss",
           "mean_loss_and_grad"]
