"""Loss-based attacks: LOSS (Yeom et al. 2018) and the reference-model loss difference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dp_audit.attacks.base import ATTACKS, Attack
from dp_audit.attacks.signals import ReferenceSignals, Signals
from dp_audit.errors import UsageError


@ATTACKS.register("loss")
@dataclass(kw_only=True, eq=False)
class LossAttack(Attack):
    """Yeom, Giacomelli, Fredrikson & Jha 2018 ("Privacy Risk in Machine Learning: Analyzing the
    Connection to Overfitting"): members have lower loss; score = −loss."""

    name = "loss"
    needs_reference = 0
    requires = ("loss",)

    def _score(self, target: Signals) -> np.ndarray:
        return -target.loss


def out_mean(values: np.ndarray, in_mask: np.ndarray, *, use: str = "out") -> np.ndarray:
    """Per-example mean of an (R, n) reference array over the models that did not train on the
    example (``use="out"``; examples with no such model fall back to all models) or over all."""
    if use == "all":
        return values.mean(axis=0)
    out = ~in_mask
    count = out.sum(axis=0)
    mean_out = np.where(count > 0, (values * out).sum(axis=0) / np.maximum(count, 1), values.mean(axis=0))
    return mean_out


@ATTACKS.register("ref-loss")
@dataclass(kw_only=True, eq=False)
class RefLossAttack(Attack):
    """Reference-model loss difference ("calibrated loss", Watson et al. 2022, "On the Importance
    of Difficulty Calibration in Membership Inference Attacks"; Carlini et al. 2022's
    "reference" baseline): score = mean reference loss − target loss, with the mean over the
    reference models that did not train on the example (``use="out"``, the default; an example
    that every reference model trained on falls back to all models) or over all (``use="all"``)."""

    name = "ref-loss"
    needs_reference = "offline"
    requires = ("loss",)
    use: str = "out"

    def __post_init__(self) -> None:
        if self.use not in ("out", "all"):
            raise UsageError(f"ref-loss: use must be 'out' or 'all', got {self.use!r}")

    def _fit(self, reference: ReferenceSignals | None) -> None:
        self.reference_loss_ = out_mean(reference.stack("loss"), reference.in_mask, use=self.use)

    def _score(self, target: Signals) -> np.ndarray:
        return self.reference_loss_ - target.loss
