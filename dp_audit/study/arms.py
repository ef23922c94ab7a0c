"""The arms of the AWP-leak study and its step-level sweeps (issue 17, docs/awp-leak.md "The study").

An arm is one training mechanism: a run config (trained on the built-in task and audited end to
end, black-box one-run) and the step-level constructions that audit the same mechanism in DP's own
threat model. An arm with several constructions (DP-Flat with every paper component on) runs each
at α/k, so the largest of the k bounds is still a (1 − α) lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# white-box Dirac gradient canaries of every arm with per-sample gradients (DP-SGD: unused
# position rows; white-box DP-Flat: a dedicated audit parameter; docs/whitebox.md). The DP-ZO arms
# have none (one clipped scalar per example): "-" in the white-box column.
DIRAC_CANARIES = 1000
GROUPS = ("control", "paper", "private")  # DP-correct references | DP-Flat paper mode | DP-Flat private variants

_OFF = {"awp": False, "sparse": False, "distill": False}
_PREFIX = {"model": {"tuning": "prefix"}}


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    group: str  # one of GROUPS
    spec: dict[str, Any]  # RunConfig sections merged over the study's base config
    constructions: tuple[str, ...] = ()  # step-level constructions; () -> "-" in the table
    component: str = ""  # paper arms: which non-private component(s) are on


def _dpflat(label_name: str, label: str, group: str, dpflat: dict, constructions: tuple[str, ...],
            component: str = "") -> Arm:
    return Arm(label_name, label, group, {"trainer": "dpflat", **_PREFIX, "dpflat": dpflat,
                                         "canaries": {"gradient": DIRAC_CANARIES}}, constructions, component)


def awp_leak_arms() -> tuple[Arm, ...]:
    return (
        # DP-SGD and every DP-Flat arm carry Dirac gradient canaries: their white-box one-run ε_LB
        # (docs/whitebox.md); DP-ZO has none, so its arms show "-" in that column
        Arm("dpsgd", "DP-SGD", "control", {"trainer": "dpsgd", "canaries": {"gradient": DIRAC_CANARIES}},
            ("dpsgd-dirac",)),
        _dpflat("dpflat-paper-awp", "DP-Flat paper: AWP only", "paper",
                {**_OFF, "awp": True, "awp_mode": "paper"}, ("dpflat-awp-paper",), "AWP"),
        _dpflat("dpflat-paper-sparse", "DP-Flat paper: sparse only", "paper",
                {**_OFF, "sparse": True, "sparse_mode": "paper"}, ("dpflat-sparse-paper",), "sparse selection"),
        _dpflat("dpflat-paper-distill", "DP-Flat paper: distill only", "paper",
                {**_OFF, "distill": True, "distill_mode": "paper"}, ("dpflat-distill-paper",), "distillation"),
        _dpflat("dpflat-paper-all", "DP-Flat paper: all three", "paper",
                {"awp": True, "awp_mode": "paper", "sparse": True, "sparse_mode": "paper", "distill": True,
                 "distill_mode": "paper"},
                ("dpflat-awp-paper", "dpflat-sparse-paper", "dpflat-distill-paper"), "AWP + sparse + distill"),
        _dpflat("dpflat-dpsat", "DP-Flat private: DP-SAT AWP", "private",
                {**_OFF, "awp": True, "awp_mode": "dpsat"}, ("dpflat-awp-dpsat",)),
        _dpflat("dpflat-per-example", "DP-Flat private: per-example AWP", "private",
                {**_OFF, "awp": True, "awp_mode": "per-example"}, ("dpflat-awp-per-example",)),
        _dpflat("dpflat-public", "DP-Flat private: public sparse + distill", "private",
                {**_OFF, "sparse": True, "sparse_mode": "public", "distill": True, "distill_mode": "public"},
                ("dpflat-sparse-public", "dpflat-distill-public")),
        Arm("dpzo-gaussian", "DP-ZO Gaussian", "control", {"trainer": "dpzo", "dpzo": {"noise": "gaussian"}},
            ("dpzo-gaussian",)),
        Arm("dpzo-laplace", "DP-ZO Laplace", "control", {"trainer": "dpzo", "dpzo": {"noise": "laplace"}},
            ("dpzo-laplace",)),
    )


@dataclass(frozen=True)
class SweepPoint:
    """One step-level audit of ``construction`` with ``option`` = ``value``."""

    sweep: str  # "awp-gamma" | "distill-lambda"
    construction: str
    option: str
    value: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.sweep}-{self.value:g}"


GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1)
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0)


def awp_leak_sweeps() -> tuple[SweepPoint, ...]:
    return (tuple(SweepPoint("awp-gamma", "dpflat-awp-paper", "gamma", g) for g in GAMMAS)
            + tuple(SweepPoint("distill-lambda", "dpflat-distill-paper", "lam", v) for v in LAMBDAS))


# The built-in task at two sizes. --quick: the whole study in a few minutes on 2 CPUs (a tiny
# backbone, 800 private examples, 3 epochs); the full study uses the demo's settings.
QUICK_BASE: dict[str, Any] = {
    "data": {"n_public": 600, "n_train": 800, "n_dev": 100, "n_test": 300, "vocab_size": 200, "max_length": 24},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "pretrain_epochs": 2},
    "canaries": {"m": 200, "kind": "rare-token"},
    "train": {"epochs": 3, "batch_size": 32, "lr": 1e-3},
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0},
    "dpflat": {"distill_epochs": 2},
}
FULL_BASE: dict[str, Any] = {
    "canaries": {"m": 500, "kind": "rare-token"},
    "train": {"epochs": 15, "batch_size": 64, "lr": 1e-3},
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0},
}
QUICK_TRIALS = 20_000
FULL_TRIALS = 100_000


def merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, one level of sections deep."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out
