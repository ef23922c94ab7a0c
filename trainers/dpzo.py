"""DP-ZO (Tang et al., arXiv 2401.04343; the same algorithm as DPZero, Zhang et al. 2024).

Per step: Poisson-sample S with rate q; draw a public seed s from the training generator; the
per-example SPSA scalar ρ_i = (ℓ(θ+λz; x_i) − ℓ(θ−λz; x_i)) / (2λ) with z regenerated from s
(trainers.zo), clipped to [−C, C]; g = (Σ_i clip(ρ_i) + noise) / (qn); θ ← θ − η·g·z.

Neighbouring relation: add/remove one example (the relation of Poisson-subsampling accounting,
as in Opacus). Adding or removing x changes Σ_i clip(ρ_i) by at most C, so the sensitivity is C:
Gaussian noise N(0, σ²C²) (accounted as a Poisson-subsampled Gaussian, σ from the Opacus
accountant for the target (ε, δ)), or Laplace noise of scale C/ε₀ (ε₀-DP per step; with sampling
ln(1 + q(e^{ε₀} − 1)) per step, composed over T steps: pure ε-DP). ε₀ comes in closed form from
the target: T·ln(1 + q(e^{ε₀} − 1)) = ε  ⇔  ε₀ = ln(1 + (e^{ε/T} − 1)/q). (Under replace-one
neighbours the sensitivity would be 2C.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dp_audit.accounting import laplace_pure_epsilon
from dp_audit.config import RunConfig
from dp_audit.records import PrivacyClaim
from dp_audit.trainers.base import (TRAINERS, Prepared, TrainResult, noise_generator, noise_record, poisson_steps,
                                   sampling_generator)
from dp_audit.trainers.dpsgd import gaussian_epsilon
from dp_audit.trainers.causal_lm import per_example_loss_fn
from dp_audit.trainers.modeling import trainable_parameters
from dp_audit.trainers.zo import PerExampleLoss, ZOStep, cross_entropy_each, run_zo


@dataclass(frozen=True)
class ZOPlan:
    noise: str  # gaussian | laplace
    sample_rate: float
    steps: int
    clip: float
    perturbation_scale: float
    noise_multiplier: float = 0.0  # gaussian: std σ·C
    epsilon_step: float = 0.0  # laplace: ε₀ per step, scale C/ε₀
    reproducible_noise: bool = False  # noise seeded from train.seed (replayable) instead of OS entropy

    @property
    def noise_scale(self) -> float:
        """Std of the Gaussian noise, or the scale b of the Laplace noise, on the clipped sum."""
        return self.noise_multiplier * self.clip if self.noise == "gaussian" else self.clip / self.epsilon_step


def laplace_epsilon_step(*, epsilon: float, sample_rate: float, steps: int) -> float:
    """ε₀ such that ``steps``·ln(1 + q(e^{ε₀} − 1)) = ``epsilon`` (closed form)."""
    if epsilon <= 0 or steps < 1 or not 0 < sample_rate <= 1:
        raise ValueError("need epsilon > 0, steps >= 1 and 0 < sample_rate <= 1")
    return math.log1p(math.expm1(epsilon / steps) / sample_rate)


def zo_steps(cfg: RunConfig, n: int) -> tuple[float, int]:
    q, steps = poisson_steps(n, cfg.train.batch_size, cfg.train.epochs)
    return q, (cfg.dpzo.steps or steps)


def plan_zo(cfg: RunConfig, n: int) -> ZOPlan:
    q, steps = zo_steps(cfg, n)
    z = cfg.dpzo
    common = dict(noise=z.noise, sample_rate=q, steps=steps, clip=z.clip, perturbation_scale=z.perturbation_scale,
                  reproducible_noise=cfg.privacy.reproducible_noise)
    if z.noise == "laplace":
        return ZOPlan(**common, epsilon_step=laplace_epsilon_step(epsilon=cfg.privacy.epsilon, sample_rate=q,
                                                                   steps=steps))
    from opacus.accountants.utils import get_noise_multiplier

    sigma = cfg.privacy.noise_multiplier or get_noise_multiplier(
        target_epsilon=cfg.privacy.epsilon, target_delta=cfg.privacy.delta, sample_rate=q, steps=steps,
        accountant=cfg.privacy.accountant, epsilon_tolerance=0.01)
    return ZOPlan(**common, noise_multiplier=float(sigma))


def observed_zo(steps: list[ZOStep], plan: ZOPlan) -> dict[str, Any]:
    """The mechanism as run, read back from the steps taken (the DP-ZO counterpart of DP-SGD's
    :func:`~dp_audit.trainers.dpsgd.observed_mechanism`): ``steps`` taken (noise-only steps on
    empty batches included, also counted as ``empty_batch_steps``), ``planned_steps``, the Poisson
    rate the batches were drawn at, the clip bound and the noise each step drew. Where steps
    differ, the record keeps the least private-looking value (the smallest rate, the largest noise,
    the smallest clip as sensitivity), so the ε computed from it stays a lower bound of the run's;
    a step without noise makes the noise scale 0 (ε = ∞). Gaussian: ``noise_multiplier`` = noise
    std / C; Laplace: ``laplace_scale`` b and ``epsilon_step`` = C / b (absent when b = 0)."""
    kinds = sorted({s.noise for s in steps})
    noisy = [s.noise_scale for s in steps if s.noise != "none"]
    scale = 0.0 if (not steps or len(noisy) < len(steps)) else max(noisy)
    clips = [s.clip for s in steps if s.clip is not None]
    # the smallest clip bound: ε grows with the sensitivity C (C/b for Laplace, σ = std/C for the
    # Gaussian), so the largest would overstate the ε of the steps clipped more tightly
    clip = min(clips) if clips and len(clips) == len(steps) else float(plan.clip)
    rates = [s.sample_rate for s in steps if s.sample_rate is not None]
    rec: dict[str, Any] = {
        "steps": len(steps), "planned_steps": int(plan.steps),
        "empty_batch_steps": sum(1 for s in steps if s.batch_size == 0),
        "sample_rate": min(rates) if rates else float(plan.sample_rate),
        "noise": "+".join(kinds) if kinds else "none", "noise_scale": scale,
        "noise_scale_min": min(noisy) if noisy and len(noisy) == len(steps) else 0.0,
        "sensitivity": clip,
        "expected_batch_size": max((s.normaliser for s in steps if s.normaliser is not None), default=0.0),
        "source": "trainers/zo.py: the steps DP-ZO took (rate, clip and noise each step used)"}
    if plan.noise == "gaussian":
        rec["noise_multiplier"] = scale / clip if clip > 0 else 0.0
        rec["max_grad_norm"] = clip
    else:
        rec["laplace_scale"] = scale
        if scale > 0:
            rec["epsilon_step"] = clip / scale
    return rec


def ledger_zo(plan: ZOPlan, *, component: str = "dpzo", unaccounted: list[dict[str, Any]] | None = None,
              observed: dict[str, Any] | None = None) -> dict:
    if plan.noise == "gaussian":
        ev = {"mechanism": "subsampled_gaussian", "component": component, "noise_multiplier": plan.noise_multiplier,
              "sample_rate": plan.sample_rate, "steps": plan.steps, "sensitivity": plan.clip}
    else:
        ev = {"mechanism": "subsampled_laplace", "component": component, "epsilon_step": plan.epsilon_step,
              "sample_rate": plan.sample_rate, "steps": plan.steps, "sensitivity": plan.clip,
              "laplace_scale": plan.noise_scale}
    if observed is not None:
        ev["observed"] = observed
    return {"events": [ev], "unaccounted": list(unaccounted or []),
            "noise": noise_record(reproducible=plan.reproducible_noise)}


def claim_zo(plan: ZOPlan, cfg: RunConfig, *, unaccounted: list[dict[str, Any]] | None = None) -> PrivacyClaim:
    if plan.noise == "gaussian":
        eps = gaussian_epsilon(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                               steps=plan.steps, delta=cfg.privacy.delta, accountant=cfg.privacy.accountant)
        acc = cfg.privacy.accountant
    else:  # pure ε-DP, which implies (ε, δ)-DP for the configured δ
        eps = laplace_pure_epsilon(epsilon_step=plan.epsilon_step, sample_rate=plan.sample_rate, steps=plan.steps)
        acc = "pure"
    return PrivacyClaim(epsilon=float(eps), delta=cfg.privacy.delta, accountant=acc, unaccounted=list(unaccounted or []))


def train_dpzo(model, prep: Prepared, plan: ZOPlan, *, generator: torch.Generator,
               loss_fn: PerExampleLoss = cross_entropy_each, desc: str = "DP-ZO") -> list[ZOStep]:
    """``plan.steps`` DP-ZO steps on the private split: Poisson batches at exactly q =
    ``plan.sample_rate`` from :func:`~dp_audit.trainers.base.sampling_generator` (secret unless
    ``plan.reproducible_noise``), public direction seeds from ``generator``; the noise from
    :func:`~dp_audit.trainers.base.noise_generator` (OS entropy unless ``plan.reproducible_noise``);
    the noisy sum divided by qn (n = the private split's size)."""
    cfg = prep.cfg
    noise = noise_generator(reproducible=plan.reproducible_noise, train_seed=cfg.train.seed)
    sampler = sampling_generator(reproducible=plan.reproducible_noise, generator=generator)
    return run_zo(model, trainable_parameters(model), prep.train, steps=plan.steps, sample_rate=plan.sample_rate,
                  lr=cfg.train.lr, scale=plan.perturbation_scale, clip=plan.clip, noise=plan.noise,
                  noise_scale=plan.noise_scale, private=True, generator=generator, noise_generator=noise,
                  sampling_generator=sampler, loss_fn=loss_fn,
                  restore=cfg.dpzo.restore, chunk=cfg.train.max_physical_batch_size, progress=cfg.train.progress,
                  desc=desc)


def zo_metrics(steps: list[ZOStep]) -> dict[str, Any]:
    """Training statistics of ZO steps: ``final_train_loss`` (mean of the last tenth of the batch
    losses) and ``clipped_fraction`` are computed on the training data without noise; of a DP
    run they are private (:class:`~dp_audit.trainers.base.TrainResult` ``private_metrics``)."""
    losses = [s.loss for s in steps if not math.isnan(s.loss)]
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    return {"final_train_loss": float(sum(tail) / len(tail)) if tail else float("nan"), "steps": len(steps),
            "clipped_fraction": float(sum(s.clipped_fraction for s in steps) / max(1, len(steps)))}


@TRAINERS.register("dpzo")
class DPZOTrainer:
    name = "dpzo"

    def fit(self, prep: Prepared, model, *, generator: torch.Generator) -> TrainResult:
        cfg = prep.cfg
        plan = plan_zo(cfg, prep.n_train)
        steps = train_dpzo(model, prep, plan, generator=generator, loss_fn=per_example_loss_fn(prep),
                           desc=f"DP-ZO ({plan.noise}, noise scale {plan.noise_scale:.3g})")
        stats = zo_metrics(steps)
        return TrainResult(model=model, ledger=ledger_zo(plan, observed=observed_zo(steps, plan)),
                           claim=claim_zo(plan, cfg),
                           metrics={"steps": stats.pop("steps")}, private_metrics=stats,
                           extra={"dpzo": {**asdict(plan), "noise_scale": plan.noise_scale,
                                           "neighbouring": "add/remove one example (sensitivity C)",
                                           "restore": cfg.dpzo.restore}})


__all__ = ["DPZOTrainer", "ZOPlan", "claim_zo", "laplace_epsilon_step", "ledger_zo", "observed_zo", "plan_zo",
           "train_dpzo"]
