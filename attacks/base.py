"""The attack interface and its registry (DESIGN.md §5), in scikit-learn's conventions.

An attack is a small object built from keyword options::

    attack = make_attack("lira-online", global_variance=True)
    scores = attack.fit(reference).score_samples(target)   # (n,) finite floats, higher = member

- ``fit(reference=None)`` stores what the attack learns from :class:`ReferenceSignals` (signals of
  the same n examples under R reference models plus the (R, n) ``in_mask``) and returns ``self``;
- ``score_samples(target)`` returns one finite float per example of the target :class:`Signals`.

Class attributes say what an attack needs, so a pipeline can check before it computes anything:
``name``; ``needs_reference`` (``0``: none; ``"offline"``: reference models that did not train
on the example suffice; ``"online"``: needs models that did and models that did not); ``kinds``
(the model kinds it applies to); ``requires`` (the :class:`Signals` fields it reads, on the
target and, if it uses references, on the references).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from dp_audit.attacks.signals import ReferenceSignals, Signals
from dp_audit.errors import UsageError
from dp_audit.registry import Registry

__all__ = ["ATTACKS", "Attack", "ReferenceSignals", "Signals", "make_attack", "attacks_for"]

ATTACKS: Registry[type["Attack"]] = Registry("attack")


class Attack:
    """Base class: subclasses are keyword-only dataclasses of their options."""

    name: ClassVar[str] = ""
    needs_reference: ClassVar[int | str] = 0
    kinds: ClassVar[tuple[str, ...]] = ("classifier", "causal-lm")
    requires: ClassVar[tuple[str, ...]] = ("loss",)

    def fit(self, reference: ReferenceSignals | None = None) -> "Attack":
        if self.needs_reference:
            if reference is None:
                raise UsageError(f"attack {self.name!r} needs reference models ({self.needs_reference}); "
                                 "pass ReferenceSignals to fit()")
            if not isinstance(reference, ReferenceSignals):
                raise UsageError(f"attack {self.name!r}: fit() takes ReferenceSignals, got {type(reference).__name__}")
            for s in reference.signals:
                s.require(*self._reference_fields(), who=f"attack {self.name!r} (reference signals)")
            if self.needs_reference == "online" and not (reference.in_mask.any() and (~reference.in_mask).any()):
                raise UsageError(f"attack {self.name!r} (online) needs reference models that trained on the "
                                 "examples and models that did not")
            if self.needs_reference == "offline" and not (~reference.in_mask).any():
                raise UsageError(f"attack {self.name!r} needs reference models that did not train on the examples")
        self.reference_ = reference
        self._fit(reference)
        return self

    def score_samples(self, target: Signals) -> np.ndarray:
        if not hasattr(self, "reference_"):
            if self.needs_reference:
                raise UsageError(f"attack {self.name!r} is not fitted: call fit(reference) first")
            self.fit(None)
        if not isinstance(target, Signals):
            raise UsageError(f"attack {self.name!r}: score_samples() takes Signals, got {type(target).__name__}")
        target.require(*self.requires, who=f"attack {self.name!r}")
        if self.reference_ is not None and target.n != self.reference_.n:
            raise UsageError(f"attack {self.name!r}: target has {target.n} examples, the reference signals "
                             f"{self.reference_.n}")
        scores = np.asarray(self._score(target), dtype=np.float64)
        if scores.shape != (target.n,) or not np.all(np.isfinite(scores)):  # pragma: no cover - a bug, not input
            raise RuntimeError(f"attack {self.name!r} produced invalid scores (shape {scores.shape})")
        return scores

    def get_params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}

    # subclass hooks
    def _reference_fields(self) -> tuple[str, ...]:
        return self.requires

    def _fit(self, reference: ReferenceSignals | None) -> None:
        pass

    def _score(self, target: Signals) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def make_attack(name: str, **options: Any) -> Attack:
    """Build a registered attack; an unknown option is a one-line UsageError."""
    cls = ATTACKS.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else "(none)"
        raise UsageError(f"attack {name!r}: bad options {sorted(options)} ({exc}); known options: {known}") from None


def attacks_for(kind: str, *, reference: bool = True) -> list[str]:
    """Registered attack names that apply to a model kind (and need no references, if asked)."""
    return [n for n in ATTACKS if kind in ATTACKS.get(n).kinds and (reference or not ATTACKS.get(n).needs_reference)]


# Register the built-in attacks (each module decorates its classes with ATTACKS.register).
from dp_audit.attacks import loss, lira, rmia, lm, exposure  # noqa: E402,F401,I001  (registry order)
