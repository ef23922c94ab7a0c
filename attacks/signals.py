"""Per-example signals of one model on given texts (DESIGN.md §5), computed once and cached.

A :class:`Signals` holds, for n examples, what membership inference attacks read:

- ``loss`` (n,): cross-entropy of the label (classifiers) or the mean next-token negative
  log-likelihood over the text's predicted tokens (causal LMs);
- ``logits`` (n, C) and ``labels`` (n,) for classifiers;
- ``confidence_logit`` (n,): LiRA's logit-scaled confidence φ = log p_y − log(1 − p_y)
  (Carlini et al. 2022, §IV), computed from the logits as ``z_y − logsumexp_{j≠y} z_j`` (exact and
  stable: no ``log(1 − p)`` of a rounded probability);
- ``token_logprobs`` (n, L) with ``token_mask`` (n, L) for causal LMs: entry t is
  log p(x_{t+1} | x_{≤t}); ``token_mu`` and ``token_sigma`` (n, L): the mean and standard deviation
  of log p(z | x_{≤t}) for z drawn from the model's own next-token distribution (min-k%++);
- ``text_bytes_zlib`` (n,): ``len(zlib.compress(text.encode("utf-8")))`` (zlib ratio);
- ``candidate_loss`` (n, K): losses of K candidate secrets for each example, under the same model
  (exposure, Carlini et al. 2019).

Absent fields are ``None``; ``save``/``load`` write an npz (no pickle) where they are simply missing.
:class:`ReferenceSignals` holds the signals of the same n examples under R reference models.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import load_npz, save_npz

KINDS = ("classifier", "causal-lm")

_DTYPES = {
    "loss": np.float64, "logits": np.float32, "labels": np.int64, "confidence_logit": np.float64,
    "token_logprobs": np.float32, "token_mask": np.bool_, "token_mu": np.float32, "token_sigma": np.float32,
    "text_bytes_zlib": np.int64, "candidate_loss": np.float64,
}
_NDIM = {"loss": 1, "logits": 2, "labels": 1, "confidence_logit": 1, "token_logprobs": 2, "token_mask": 2,
         "token_mu": 2, "token_sigma": 2, "text_bytes_zlib": 1, "candidate_loss": 2}
_TOKEN_FIELDS = ("token_logprobs", "token_mask", "token_mu", "token_sigma")


@dataclass(frozen=True)
class Signals:
    """Per-example arrays of one model on n examples (see the module docstring)."""

    loss: np.ndarray
    logits: np.ndarray | None = None
    labels: np.ndarray | None = None
    confidence_logit: np.ndarray | None = None
    token_logprobs: np.ndarray | None = None
    token_mask: np.ndarray | None = None
    token_mu: np.ndarray | None = None
    token_sigma: np.ndarray | None = None
    text_bytes_zlib: np.ndarray | None = None
    candidate_loss: np.ndarray | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=_DTYPES[f.name])
            if arr.ndim != _NDIM[f.name]:
                raise UsageError(f"signals: {f.name!r} must have {_NDIM[f.name]} dimension(s), got shape {arr.shape}")
            object.__setattr__(self, f.name, arr)
        n = self.loss.shape[0]
        for f in dataclasses.fields(self):
            arr = getattr(self, f.name)
            if arr is not None and arr.shape[0] != n:
                raise UsageError(f"signals: {f.name!r} has {arr.shape[0]} rows but 'loss' has {n}")
        if not np.all(np.isfinite(self.loss)):
            raise UsageError(f"signals: {int(np.sum(~np.isfinite(self.loss)))} loss value(s) are NaN or infinite")
        present = [k for k in _TOKEN_FIELDS if getattr(self, k) is not None]
        if present:
            if self.token_logprobs is None or self.token_mask is None:
                raise UsageError("signals: token fields need both 'token_logprobs' and 'token_mask'")
            shape = self.token_logprobs.shape
            bad = [k for k in present if getattr(self, k).shape != shape]
            if bad:
                raise UsageError(f"signals: {', '.join(bad)} must have the shape of 'token_logprobs' {shape}")

    @property
    def n(self) -> int:
        return int(self.loss.shape[0])

    def fields_present(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def require(self, *names: str, who: str = "this attack") -> None:
        """Raise a one-line UsageError naming the missing fields."""
        missing = [k for k in names if getattr(self, k) is None]
        if missing:
            raise UsageError(f"{who} needs signal(s) {', '.join(missing)}; these signals have "
                             f"{', '.join(self.fields_present())}")

    def subset(self, index: Any) -> "Signals":
        return Signals(**{k: getattr(self, k)[index] for k in self.fields_present()})

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.fields_present()}

    def save(self, path: str | Path) -> Path:
        return save_npz(path, **self.to_arrays())

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, source: str = "signals") -> "Signals":
        names = {f.name for f in dataclasses.fields(cls)}
        if "loss" not in arrays:
            raise IntegrityError(f"{source}: no 'loss' array")
        try:
            return cls(**{k: v for k, v in arrays.items() if k in names})
        except UsageError as exc:
            raise IntegrityError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path, *, integrity: bool = True) -> "Signals":
        """Load cached signals; a missing, unreadable or inconsistent file is an IntegrityError
        (a run artifact) unless ``integrity=False`` (then a UsageError)."""
        arrays = load_npz(path, integrity=integrity)
        try:
            return cls.from_arrays(arrays, source=str(path))
        except IntegrityError as exc:
            if integrity:
                raise
            raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class ReferenceSignals:
    """Signals of the same n examples under R reference models, and which model trained on which
    example: ``in_mask[r, i]`` is true when reference model r trained on example i."""

    signals: tuple[Signals, ...]
    in_mask: np.ndarray

    def __post_init__(self) -> None:
        sigs = tuple(self.signals)
        mask = np.asarray(self.in_mask)
        if not sigs:
            raise UsageError("reference signals: need at least one reference model")
        if mask.dtype != bool:
            if not np.all(np.isin(mask, (0, 1))):
                raise UsageError("reference signals: 'in_mask' must be boolean")
            mask = mask.astype(bool)
        mask = np.atleast_2d(mask)
        n = sigs[0].n
        if mask.shape != (len(sigs), n) or any(s.n != n for s in sigs):
            raise UsageError(f"reference signals: in_mask has shape {mask.shape}, need ({len(sigs)}, n) with every "
                             f"model's signals over the same n={n} examples")
        object.__setattr__(self, "signals", sigs)
        object.__setattr__(self, "in_mask", mask)

    @property
    def n_models(self) -> int:
        return len(self.signals)

    @property
    def n(self) -> int:
        return self.signals[0].n

    def stack(self, name: str) -> np.ndarray:
        """An (R, n) array of a per-example scalar field (``loss``, ``confidence_logit`` ...)."""
        for s in self.signals:
            s.require(name, who="these reference signals")
        return np.stack([np.asarray(getattr(s, name), dtype=float) for s in self.signals])

    @classmethod
    def from_arrays(cls, *, in_mask: np.ndarray, **fields: np.ndarray) -> "ReferenceSignals":
        """From (R, n) arrays, e.g. ``from_arrays(in_mask=m, loss=L, confidence_logit=P)``."""
        mask = np.atleast_2d(np.asarray(in_mask))
        sigs = tuple(Signals(**{k: np.asarray(v)[r] for k, v in fields.items()}) for r in range(mask.shape[0]))
        return cls(signals=sigs, in_mask=mask)

    @classmethod
    def load_files(cls, paths: Sequence[str | Path], *, integrity: bool = True) -> "ReferenceSignals":
        """Read reference files written by ``dp_audit.reference.reference_task``: each an npz with
        ``in_mask`` (n,) and the fields of the reference model's :class:`Signals`."""
        paths = list(paths)
        if not paths:
            raise UsageError("no reference signal files")
        sigs, masks = [], []
        for p in paths:
            arrays = load_npz(p, integrity=integrity)
            if "in_mask" not in arrays:
                err = IntegrityError if integrity else UsageError
                raise err(f"{p}: no 'in_mask' array")
            masks.append(np.asarray(arrays.pop("in_mask")).astype(bool))
            sigs.append(Signals.from_arrays(arrays, source=str(p)))
        return cls(signals=tuple(sigs), in_mask=np.stack(masks))


def confidence_logit_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log p_y − log(1 − p_y) = z_y − logsumexp_{j≠y} z_j, exactly, for each row."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise UsageError(f"logit-scaled confidence needs (n, C >= 2) logits, got shape {z.shape}")
    rows = np.arange(z.shape[0])
    zy = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    return zy - logsumexp(others, axis=1)


def zlib_bytes(texts: Sequence[str]) -> np.ndarray:
    """Length in bytes of each UTF-8 text compressed by zlib (default level): the zlib entropy of
    Carlini et al. 2021 ("Extracting Training Data from Large Language Models")."""
    return np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.int64)


def compute_signals(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    kind: str = "classifier",
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = True,
    candidates: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> Signals:
    """Signals of ``model`` on ``texts`` (eval mode, ``torch.inference_mode``, batched).

    ``kind="classifier"``: a Hugging Face sequence classifier (plain, or PEFT prefix/LoRA), needs
    ``labels``. ``kind="causal-lm"``: a causal LM; ``labels`` are ignored. ``candidates`` (causal
    LMs, for exposure): one list of K candidate texts shared by every example, or one list of K
    per example; their losses fill ``candidate_loss`` (each distinct text is evaluated once).
    Texts are truncated to ``max_length`` tokens, by default the model's own limit
    (:func:`~dp_audit.attacks._forward.max_input_length`); never beyond it.
    """
    from dp_audit.attacks import _forward

    limit = _forward.max_input_length(model, tokenizer)
    max_length = limit if max_length is None else min(int(max_length), limit)

    texts = [str(t) for t in texts]
    if kind not in KINDS:
        raise UsageError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if not texts:
        raise UsageError("no texts to compute signals on")
    if kind == "classifier":
        if labels is None:
            raise UsageError("a classifier's signals need labels")
        labels_arr = np.asarray(list(labels), dtype=np.int64)
        if labels_arr.shape != (len(texts),):
            raise UsageError(f"{len(texts)} texts but {labels_arr.size} labels")
        logits = _forward.classifier_logits(model, tokenizer, texts, batch_size=batch_size,
                                            max_length=max_length, progress=progress)
        n_classes = logits.shape[1]
        if labels_arr.min() < 0 or labels_arr.max() >= n_classes:
            raise UsageError(f"labels must lie in [0, {n_classes - 1}] for this {n_classes}-class model")
        phi = confidence_logit_from_logits(logits, labels_arr)
        from scipy.special import log_softmax

        logp = log_softmax(logits.astype(np.float64), axis=1)
        loss = -logp[np.arange(len(texts)), labels_arr]
        return Signals(loss=loss, logits=logits, labels=labels_arr, confidence_logit=phi,
                       text_bytes_zlib=zlib_bytes(texts))
    stats = _forward.causal_token_stats(model, tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                        progress=progress, with_moments=True)
    cand = None
    if candidates is not None:
        cand = _candidate_losses(model, tokenizer, candidates, n=len(texts), batch_size=batch_size,
                                 max_length=max_length, progress=progress)
    return Signals(loss=stats["loss"], token_logprobs=stats["token_logprobs"], token_mask=stats["token_mask"],
                   token_mu=stats["token_mu"], token_sigma=stats["token_sigma"], text_bytes_zlib=zlib_bytes(texts),
                   candidate_loss=cand)


def _candidate_losses(model: Any, tokenizer: Any, candidates: Any, *, n: int, batch_size: int, max_length: int,
                      progress: bool) -> np.ndarray:
    from dp_audit.attacks import _forward

    cands = list(candidates)
    if not cands:
        raise UsageError("no candidate texts")
    per_example = not isinstance(cands[0], str)
    rows = [list(map(str, c)) for c in cands] if per_example else [list(map(str, cands))] * n
    if len(rows) != n or len({len(r) for r in rows}) != 1:
        raise UsageError("candidates: give one shared list, or one list of the same length K per text")
    unique = sorted({t for r in rows for t in r})
    losses = _forward.causal_token_stats(model, tokenizer, unique, batch_size=batch_size, max_length=max_length,
                                         progress=progress, with_moments=False, desc="candidates")["loss"]
    lookup = dict(zip(unique, losses))
    return np.array([[lookup[t] for t in r] for r in rows], dtype=np.float64)
