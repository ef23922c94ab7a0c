"""The attack interface (fit / score_samples, higher = member) and its registry."""
from __future__ import annotations
import numpy as np
from dp_audit.registry import Registry

ATTACKS = Registry("attack")


@ATTACKS.register("loss")
class LossAttack:
    """Yeom et al. 2018: lower loss = more likely member."""
    name = "loss"
    needs_reference = 0

    def fit(self, reference=None):
        return self

    def score_samples(self, target):
        return -np.asarray(target.loss, dtype=float)


def make_attack(name, **options):
    return ATTACKS.get(name)(**options)
