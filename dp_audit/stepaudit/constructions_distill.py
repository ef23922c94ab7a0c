"""Constructions (c) and (e) of issue 17: DP-Flat's cross-model flattening (distillation).

Both run one DP-SGD step through Opacus with the trainer's real
:class:`~dp_audit.trainers.dpflat_distill.Distill` component, wired by the trainer's own
``attach_components`` (the regulariser λ∇‖P − P_np‖ enters Opacus' step hook, weighted by the sum
of the clipping coefficients in paper mode, unweighted after the noise in public mode). The model
is the synthetic :class:`~dp_audit.stepaudit.toy.ToyPrefixModel`; docs/awp-leak.md explains why
each construction works.

- ``dpflat-distill-paper``: the teacher P_np is trained **without privacy on the side's own data**
  (paper mode trains it on the private split; with q = 1 the batch is the data set) with the
  trainer's ``fit_nonprivate``, inside every step. The canary is a linear example the teacher
  memorises: it moves P_np along −e0 (and nothing else moves it). The auditor starts the step at
  the midpoint of the two possible teachers, so the regulariser's unit direction ∇R flips between
  the worlds: every other example's term c_i·λ∇R changes by 2λ, and the clipped sum moves by
  C + 2(B − 1)λ (+ the canary's own c·λ) instead of C.
- ``dpflat-distill-public``: the same data, state and statistic; P_np is trained on a public split
  (no canary; the same in both worlds) and the regulariser is added after the noise: only the
  canary's clipped term differs (C). A control.
- ``dpflat-distill-escape``: the regulariser escaping clipping alone (construction (e)). The
  teacher is held fixed (the same P_np in both worlds: the auditor's teacher data without the
  canary), so only the paper-mode weighting acts: the canary's raw gradient has norm just below C
  (coefficient 1) and points along ∇R, so its term c(∇CE + λ∇R) has norm ≈ C + λ. True μ =
  (C + λ)/(σC) against a claimed 1/σ.
"""

from __future__ import annotations

import torch

from dp_audit.errors import UsageError
from dp_audit.stepaudit.construction import Construction, gaussian_claim
from dp_audit.stepaudit.constructions import CANARY_SCALE, CONSTRUCTIONS, DEFAULT_DELTA, _positive, _unit, projection

TEACHER_SEED = 20240311  # the teacher's own (public) training seed: derived from train.seed in the trainer
TEACHER_EPOCHS = 10  # official: P_np runs 10 epochs
TEACHER_LR = 1e-3  # AdamW: each epoch (one full batch) moves P_np by ≈ lr along the canary's descent
ESCAPE_MARGIN = 1e-5  # the escape canary's raw gradient norm is C·(1 − margin): coefficient exactly 1


def train_teacher(model, batch, *, epochs: int = TEACHER_EPOCHS, lr: float = TEACHER_LR,
                  init: torch.Tensor) -> torch.Tensor:
    """P_np: the trainer's ``fit_nonprivate`` (AdamW, no weight decay, full batch) on ``batch`` from
    ``init``, with the teacher's own public seed (deterministic given the data)."""
    from dp_audit.trainers.nondp import fit_nonprivate

    with torch.no_grad():
        model.prefix.copy_(init)
    n = int(batch["labels"].shape[0])
    fit_nonprivate(model, batch, epochs=epochs, batch_size=n, lr=lr, weight_decay=0.0,
                   generator=torch.Generator().manual_seed(TEACHER_SEED), progress=False, desc="teacher P_np",
                   optimizer="adamw")
    return model.prefix.detach().clone()


def _distill_construction(name: str, description: str, *, examples, d0_ids, d1_ids, state_prefix: torch.Tensor,
                          teacher, sigma: float, clip: float, lam: float, mode: str, delta: float,
                          dim: int, info: dict, public_ids=()) -> Construction:
    """Each world is a :class:`~dp_audit.trainers.dpflat.Splits` (train = the side's batch: q = 1,
    the batch is the data set; dev empty; public = ``public_ids``, the same in both worlds).
    ``teacher(side) -> P_np`` runs before every step."""
    from dp_audit.stepaudit.opacus_step import OpacusStep
    from dp_audit.stepaudit.toy import ToyPrefixModel, toy_batch
    from dp_audit.trainers.dpflat import Splits
    from dp_audit.trainers.dpflat_distill import Distill

    model = ToyPrefixModel(examples, tokens=1, width=dim)
    distill = Distill(anchor=torch.zeros(1, dim), lam=lam, mode=mode)
    runner = OpacusStep(model, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=len(d1_ids),
                        distill=distill)

    def step(state, side, generator):
        distill.anchor = teacher(side)
        return runner.step(state, side.train, generator)

    def batched(state, side, generator, n):
        distill.anchor = teacher(side)
        return runner.batched(state, side.train, generator, n)

    public, dev = toy_batch(model, list(public_ids)), toy_batch(model, [])
    d0, d1 = (Splits(train=toy_batch(model, ids), dev=dev, public=public) for ids in (d0_ids, d1_ids))
    state = {"prefix": state_prefix.view(1, dim).clone(), "previous_release": None}
    return Construction(name=name, description=description, step_fn=step, state=state,
                        d0=d0, d1=d1, statistic=projection(-_unit(dim, 0)),
                        batched_step_fn=batched,
                        info={**info, "trainer": "dpflat", "distill_mode": mode, "lambda": lam, "sigma": sigma,
                              "clip": clip, "batch_size_d1": len(d1_ids), "sample_rate": 1.0,
                              "release": "update P_after - P_before (SGD, lr 1)",
                              "statistic": "projection of the release on -e0", "claimed_sensitivity": clip},
                        **gaussian_claim(1.0 / sigma, delta))


def _teacher_pair(examples, ids0, ids1, dim: int, init: torch.Tensor):
    """Both possible teachers (the auditor knows both data sets) and a model to train them on."""
    from dp_audit.stepaudit.toy import ToyPrefixModel, toy_batch

    tmodel = ToyPrefixModel(examples, tokens=1, width=dim)
    p0 = train_teacher(tmodel, toy_batch(tmodel, ids0), init=init)
    p1 = train_teacher(tmodel, toy_batch(tmodel, ids1), init=init)
    return tmodel, p0, p1


def _distill(mode: str, *, sigma: float, delta: float, batch_size: int, dim: int, clip: float,
             lam: float) -> Construction:
    from dp_audit.stepaudit.toy import ToyExample
    from dp_audit.trainers.dpflat import teacher_data

    sigma, clip, lam = _positive("sigma", sigma), _positive("clip", clip), _positive("lam", lam)
    if batch_size < 2 or dim < 2:
        raise UsageError("dpflat-distill constructions need batch_size >= 2 and dim >= 2")
    k = batch_size - 1
    canary = ToyExample(label=0, linear=tuple((CANARY_SCALE * _unit(dim, 0)).tolist()))
    # zero features: no CE gradient (clipping coefficient 1), the teacher does not move on them
    flat = [ToyExample(label=i % 2) for i in range(k)]
    public = [ToyExample(label=i % 2) for i in range(max(k, 2))]  # the public split: no canary
    examples = [canary, *flat, *public]
    ids1, ids0 = list(range(batch_size)), list(range(1, batch_size))
    pub_ids = list(range(batch_size, batch_size + len(public)))
    init = _unit(dim, 1).view(1, dim)  # the teacher's own initial prefix (public)
    tmodel, t0, t1 = _teacher_pair(examples, ids0, ids1, dim, init)
    shift = float((t1 - t0).norm())
    if not shift > 0:
        raise UsageError("dpflat-distill: the canary does not move the teacher (check the teacher's lr)")
    # the auditor starts the step halfway between the two teachers: ∇R flips between the worlds
    p0 = (t0 + t1) / 2

    def teacher(side):
        # the trainer's own mode -> split choice (paper: the private training split = the side's
        # batch; public: the public split's training part, the same in both worlds)
        return train_teacher(tmodel, teacher_data(side, mode), init=init)
    # paper: the canary's clipped term (C) + every zero-gradient example's λ∇R flips (2(B−1)λ) + the
    # canary's own coefficient times λ (its raw gradient ≈ 38 here: c ≈ 0.026)
    expected = {"paper": clip + 2 * k * lam, "public": clip}[mode]
    desc = (f"DP-Flat step, distillation mode {mode} (λ={lam:g}), Opacus q=1, σ={sigma:g}, C={clip:g}: a canary the "
            f"teacher P_np memorises{' (P_np trained on the batch)' if mode == 'paper' else ' (P_np public)'}, "
            f"{k} zero-gradient examples, P0 halfway between the two teachers")
    info = {"teacher": "fit_nonprivate (AdamW, lr 1e-3, 10 epochs) on the batch" if mode == "paper" else
            "fit_nonprivate on the public split's training part (teacher_data(side, 'public'): no canary)", "teacher_shift": shift, "expected_sensitivity": expected,
            "canary": "linear 100*e0 (label 0)", "others": f"{k} zero-feature examples (clipping coefficient 1)"}
    return _distill_construction(f"dpflat-distill-{mode}", desc, examples=examples, d0_ids=ids0, d1_ids=ids1,
                                 state_prefix=p0, teacher=teacher, sigma=sigma, clip=clip, lam=lam, mode=mode,
                                 delta=delta, dim=dim, info=info, public_ids=pub_ids)


@CONSTRUCTIONS.register("dpflat-distill-paper")
def dpflat_distill_paper(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, dim: int = 8,
                         clip: float = 1.0, lam: float = 0.1) -> Construction:
    """One DP-Flat step, distillation paper mode: P_np trained on the batch memorises the canary."""
    return _distill("paper", sigma=sigma, delta=delta, batch_size=batch_size, dim=dim, clip=clip, lam=lam)


@CONSTRUCTIONS.register("dpflat-distill-public")
def dpflat_distill_public(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, dim: int = 8,
                          clip: float = 1.0, lam: float = 0.1) -> Construction:
    """One DP-Flat step, distillation public mode (P_np public, term after the noise): a control."""
    return _distill("public", sigma=sigma, delta=delta, batch_size=batch_size, dim=dim, clip=clip, lam=lam)


@CONSTRUCTIONS.register("dpflat-distill-escape")
def dpflat_distill_escape(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, dim: int = 8,
                          clip: float = 1.0, lam: float = 0.1) -> Construction:
    """Paper-mode weighting alone (teacher fixed): the canary's term has norm C + λ, not C."""
    from dp_audit.stepaudit.toy import ToyExample

    sigma, clip, lam = _positive("sigma", sigma), _positive("clip", clip), _positive("lam", lam)
    if batch_size < 1 or dim < 2:
        raise UsageError("dpflat-distill-escape needs batch_size >= 1 and dim >= 2")
    # P0 = 0, P_np = -e0: ∇R = +e0. The canary (label 0, z = <a, p> = 0 at P0) has raw gradient a/2:
    # a = 2C(1 - margin)·e0 puts it just inside the clipping ball (coefficient 1), along ∇R.
    a = 2 * clip * (1 - ESCAPE_MARGIN) * _unit(dim, 0)
    canary = ToyExample(label=0, linear=tuple(a.tolist()))
    flat = [ToyExample(label=i % 2) for i in range(batch_size - 1)]
    anchor = -_unit(dim, 0).view(1, dim)
    ids = list(range(batch_size))
    desc = (f"DP-Flat step, distillation paper-mode weighting with a fixed teacher (λ={lam:g}), Opacus q=1, "
            f"σ={sigma:g}, C={clip:g}: a canary with raw gradient C·(1-1e-5) along ∇R")
    info = {"teacher": "fixed (-e0), the same in both worlds", "expected_sensitivity": clip * (1 - ESCAPE_MARGIN) + lam,
            "expected_mu": (clip * (1 - ESCAPE_MARGIN) + lam) / (sigma * clip),
            "canary": "linear 2C(1-1e-5)*e0 (label 0), raw gradient along grad R"}
    return _distill_construction("dpflat-distill-escape", desc, examples=[canary, *flat], d0_ids=ids[1:], d1_ids=ids,
                                 state_prefix=torch.zeros(dim), teacher=lambda side: anchor, sigma=sigma, clip=clip,
                                 lam=lam, mode="paper", delta=delta, dim=dim, info=info)


__all__ = ["TEACHER_SEED", "dpflat_distill_escape", "dpflat_distill_paper", "dpflat_distill_public", "train_teacher"]
