"""DP-Flat (Chen et al., arXiv 2403.04124): DP-SGD prefix tuning with within-layer (AWP),
cross-layer (sparse prefix) and cross-model (distillation) flattening, each switchable and each
in a ``paper`` mode (as published, non-private parts included) or a DP-correct mode; and
black-box DP-Flat (cross-model flattening on the DP-ZO optimiser). docs/trainers.md explains the
modes, what each leaves unaccounted, and how the ledger records it.

Order of a white-box run (paper mode as published, docs/trainers.md has the table "official code |
here"):
1. the classifier head is frozen (prefix only trainable; ``train_head`` keeps it trainable);
2. layer selection (sparse) on a selection prefix: DP-trained on the private split (ε = 8,
   C = 0.2, official) in ``paper`` mode, or trained without privacy on the public split
   (``public``); selected layers are masked and zeroed;
3. the teacher P_np for distillation, trained without privacy *with the layer mask applied*
   (10 epochs), on the private split (``paper``) or the public split (``public``); each
   reference run starts from its own seeded initial prefix (``reference_init = "own"``);
4. DP-SGD (Opacus, Poisson sampling, clip C, σ from the target ε over the DP-SGD steps) from
   the initial prefix, with AWP before each step during the first part of training, the
   distillation term (weighted by the clipping coefficients in paper mode) and the layer mask
   applied to the released gradient in Opacus' step hook.
The claim is the accountant's ε of the DP-SGD steps; the ledger lists what it does not cover.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from dp_audit.config import RunConfig
from dp_audit.errors import UsageError
from dp_audit.trainers.causal_lm import batch_loss_fn, per_example_loss_fn
from dp_audit.trainers.base import TRAINERS, Prepared, TrainResult, replace_cfg
from dp_audit.trainers.dpflat_awp import AWP
from dp_audit.trainers.dpflat_dirac import AuditSlotCanaries
from dp_audit.trainers.dpflat_distill import Distill, OutputDistill, clip_coefficients, distill_value
from dp_audit.trainers.dpflat_prefix import PrefixHook, layout_of, prefix_weight
from dp_audit.trainers.dpflat_sparse import select_layers
from dp_audit.trainers.dpsgd import (claim_for, gaussian_epsilon, ledger_for, make_private, observed_mechanism, plan,
                                     run_steps, unwrap)
from dp_audit.trainers.dpzo import claim_zo, ledger_zo, observed_zo, plan_zo, train_dpzo, zo_metrics
from dp_audit.trainers.modeling import Batch, subset, trainable_parameters
from dp_audit.trainers.nondp import fit_nonprivate
from dp_audit.trainers.zo import run_zo


# --------------------------------------------------------------------------- helpers

def public_splits(prep: Prepared | Splits) -> tuple[Batch, Batch]:
    """The public split cut in (train, probe): the probe part is its last max(1, n_public // 4)
    examples. The cut reads the public split only: sized by the private dev split (as it was:
    min(n_dev, n_public/4)), one example added to the dev split moved a public example between the
    teacher's data and the probe, so the public modes were functions of private data."""
    n = int(prep.public["labels"].shape[0])
    m = max(1, n // 4)
    return subset(prep.public, slice(0, n - m)), subset(prep.public, slice(n - m, n))


@dataclass(frozen=True)
class Splits:
    """The three splits DP-Flat's components read: private ``train`` and ``dev``, and ``public``.
    :class:`~dp_audit.trainers.base.Prepared` has them too; the step-audit constructions build
    their two worlds as ``Splits`` and pass them to the same mode -> split functions below."""

    train: Batch
    dev: Batch
    public: Batch


def teacher_data(prep: Prepared | Splits, mode: str) -> Batch:
    """What the teacher P_np (white-box) or θ_np (black-box) is trained on in distillation ``mode``:
    the private training split in ``paper`` mode, the public split's training part otherwise."""
    return prep.train if mode == "paper" else public_splits(prep)[0]


def selection_data(prep: Prepared | Splits, mode: str) -> Batch:
    """What a non-private selection prefix is trained on in sparse ``mode`` (paper: the private
    training split; public: the public split's training part)."""
    return prep.train if mode == "paper" else public_splits(prep)[0]


def probe_data(prep: Prepared | Splits, mode: str) -> Batch:
    """What the layer-selection sharpness probe reads in sparse ``mode``: the private dev split in
    ``paper`` mode, the public split's held-out part otherwise."""
    return prep.dev if mode == "paper" else public_splits(prep)[1]


def _snapshot(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainable_parameters(model)]


def _load(model, state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, s in zip(trainable_parameters(model), state):
            p.copy_(s)


class _StepHooks:
    """The DP optimiser with a callback after each step (run_steps only calls zero_grad/step).
    ``released`` counts the noised gradients Opacus actually released (its step hook ran): the
    ``observed.steps`` of the ledger, measured rather than copied from the plan."""

    def __init__(self, optimizer, after_step):
        self.optimizer, self.after_step = optimizer, after_step
        self.released = 0

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.optimizer.params

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def step(self):
        out = self.optimizer.step()
        self.after_step()
        return out


def _chain_step_hook(optimizer, fn) -> None:
    """Run ``fn(optimizer)`` after Opacus clipped, noised and scaled the gradient, before the
    inner optimiser step (keeps any hook the privacy engine attached)."""
    prev = optimizer.step_hook

    def hook(opt):
        if prev is not None:
            prev(opt)
        fn(opt)

    optimizer.attach_step_hook(hook)


def unaccounted_whitebox(cfg: RunConfig, *, removed: list[int]) -> list[dict[str, str]]:
    f, out = cfg.dpflat, []
    if f.awp and f.awp_mode == "paper":
        out.append({"component": "awp", "reason": "perturbation v computed from the raw (unclipped, un-noised) "
                    "gradient of a private micro-batch; every clipped gradient of the logical batch is evaluated "
                    "at P+v"})
    if f.sparse and f.sparse_k > 0 and f.sparse_mode == "paper":
        ref = (f"DP-trained (epsilon = {f.sparse_reference_epsilon:g}, C = {f.sparse_reference_clip:g}; not composed "
               "into the claim)" if f.sparse_reference == "dp" else "trained without privacy")
        out.append({"component": "sparse", "reason": f"layer selection (removed {removed}) from a prefix {ref} on the "
                    "private training split, probed without privacy on the private dev split"})
    if f.distill and f.distill_mode == "paper":
        out.append({"component": "distill", "reason": f"P_np trained without privacy on the private training split "
                    f"({f.distill_epochs} epochs)"})
    if f.distill and f.distill_mode == "paper" and f.distill_target == "weights":
        out.append({"component": "distill-regulariser", "reason": f"lambda*grad||P-P_np||_F enters each example's "
                    f"term with its clipping coefficient, after the norms are taken: true sensitivity "
                    f"C+lambda = {cfg.privacy.max_grad_norm + f.distill_lambda:g}, the ledger uses "
                    f"C = {cfg.privacy.max_grad_norm:g}"})
    return out


def unaccounted_blackbox(cfg: RunConfig) -> list[dict[str, str]]:
    if cfg.dpflat.distill_mode == "paper":
        return [{"component": "distill", "reason": f"theta_np trained without privacy (zeroth-order) on the private "
                 f"training split ({cfg.dpflat.distill_epochs} epochs)"}]
    return []


# --------------------------------------------------------------------------- white-box

def derived_generator(cfg: RunConfig, tag: int) -> torch.Generator:
    """A generator of its own for a reference run (``tag``), derived from ``train.seed``."""
    seed = int(np.random.SeedSequence([cfg.train.seed, tag]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


_SELECTION, _TEACHER = 1, 2


def freeze_head(model) -> list[str]:
    """Prefix only trainable (official): every other trainable parameter is frozen. Returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        if p.requires_grad and "prompt_encoder" not in name:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


class _References:
    """Reference prefixes (selection prefix, teacher P_np), each trained from the DP run's initial
    state or, with ``reference_init = "own"``, from its own initial prefix drawn from its own
    generator (the official code trains them in separate runs with their own seed)."""

    def __init__(self, model, prep: Prepared):
        self.model, self.prep, self.cfg = model, prep, prep.cfg
        self.init = _snapshot(model)
        self.info: dict[str, Any] = {}

    def start(self, generator: torch.Generator) -> None:
        _load(self.model, self.init)
        if self.cfg.dpflat.reference_init == "own":
            with torch.no_grad():
                prefix_weight(self.model).normal_(0.0, 1.0, generator=generator)

    def restore(self) -> None:
        _load(self.model, self.init)

    def selection(self) -> list[torch.Tensor]:
        """The prefix the layer selection probes."""
        cfg, f = self.cfg, self.cfg.dpflat
        g = derived_generator(cfg, _SELECTION)
        self.start(g)
        epochs = f.sparse_reference_epochs or cfg.train.epochs
        if f.sparse_mode == "paper" and f.sparse_reference == "dp":
            rcfg = replace_cfg(cfg, privacy={"epsilon": f.sparse_reference_epsilon, "noise_multiplier": 0.0,
                                             "max_grad_norm": f.sparse_reference_clip, "inject_bug": "none"},
                               train={"epochs": epochs})
            setup = plan(rcfg, self.prep.n_train)
            gsm, optimizer, loader = make_private(self.model, self.prep, rcfg, setup, generator=g,
                                                  noise_stream=1)  # never the main run's noise
            losses = run_steps(gsm, optimizer, loader, setup, cfg=rcfg, loss_fn=batch_loss_fn(self.prep),
                               desc=f"DP selection prefix (ε={f.sparse_reference_epsilon:g})")
            unwrap(gsm)
            eps = gaussian_epsilon(noise_multiplier=setup.noise_multiplier, sample_rate=setup.accounted_sample_rate,
                                   steps=setup.steps, delta=cfg.privacy.delta, accountant=cfg.privacy.accountant)
            self.info["selection"] = {"split": "private", "dp": True, "epsilon": eps, "delta": cfg.privacy.delta,
                                      "max_grad_norm": f.sparse_reference_clip,
                                      "noise_multiplier": setup.noise_multiplier, "steps": setup.steps,
                                      "epochs": epochs, "init": f.reference_init}
        else:
            data = selection_data(self.prep, f.sparse_mode)
            losses = fit_nonprivate(self.model, data, epochs=epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                                    weight_decay=cfg.train.weight_decay, generator=g, progress=cfg.train.progress,
                                    desc="non-private selection prefix", optimizer=cfg.train.optimizer,
                                    loss_fn=batch_loss_fn(self.prep))
            self.info["selection"] = {"split": "private" if f.sparse_mode == "paper" else "public", "dp": False,
                                      "epochs": epochs, "n": int(data["labels"].shape[0]), "init": f.reference_init}
        if self.info["selection"].get("split") == "public":  # a loss on private data is not released
            self.info["selection"]["final_loss"] = losses[-1] if losses else None
        return _snapshot(self.model)

    def teacher(self, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """P_np: trained without privacy, with the layer mask applied when ``distill_teacher_mask``."""
        cfg, f = self.cfg, self.cfg.dpflat
        g = derived_generator(cfg, _TEACHER)
        self.start(g)
        source = "private" if f.distill_mode == "paper" else "public"
        data = teacher_data(self.prep, f.distill_mode)
        use_mask = mask is not None and f.distill_teacher_mask
        hook = PrefixHook(self.model)
        hook.mask = mask if use_mask else None
        try:
            if use_mask:
                with torch.no_grad():
                    prefix_weight(self.model).mul_(mask)
            losses = fit_nonprivate(self.model, data, epochs=f.distill_epochs, batch_size=cfg.train.batch_size,
                                    lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, generator=g,
                                    progress=cfg.train.progress, desc=f"non-private teacher P_np ({source})",
                                    optimizer=cfg.train.optimizer, loss_fn=batch_loss_fn(self.prep))
        finally:
            hook.remove()
        self.info["teacher"] = {"split": source, "epochs": f.distill_epochs, "masked": use_mask, "init": f.reference_init,
                                "n": int(data["labels"].shape[0])}
        if source == "public":  # a training loss on private data is not released
            self.info["teacher"]["final_loss"] = losses[-1] if losses else None
        return _snapshot(self.model)


def attach_components(optimizer, weight: torch.nn.Parameter, *, awp: AWP | None, distill: Distill | None,
                      mask: torch.Tensor | None, canaries: AuditSlotCanaries | None = None):
    """Wire DP-Flat's components into an Opacus DPOptimizer: the distillation term and the layer
    mask go into its step hook (after clip, noise and scaling, before the inner optimiser step),
    AWP around each step. Returns (before_step(step, batch), the optimizer to step).
    ``canaries`` (Dirac gradient canaries, attached to ``optimizer``): drawn each step; left out of
    AWP's micro-batch and of the distillation coefficients, so the prefix release is distributed as
    without them (trainers/dpflat_dirac.py)."""

    counter = {"released": 0}

    def after_noise(opt) -> None:
        counter["released"] += 1
        if weight.grad is None:
            return
        if distill is not None:
            coefficients = clip_coefficients(opt)
            if canaries is not None:  # the real examples' rows come first; the canaries' are C·e_i only
                coefficients = coefficients[:canaries.real_rows]
            distill.add_to_grad_(weight, coefficients=coefficients, expected_batch_size=opt.expected_batch_size)
        if mask is not None:
            weight.grad.mul_(mask)  # no noise (and no data) on removed layers

    _chain_step_hook(optimizer, after_noise)

    def before_step(step: int, batch: dict) -> None:
        if canaries is not None:  # this step's canaries (secret sampling generator); AWP never sees them
            canaries.draw()
        if awp is not None:
            awp.before_step(step, batch)

    stepper = _StepHooks(optimizer, awp.after_step if awp is not None else (lambda: None))

    def after_step() -> None:
        stepper.released = counter["released"]
        if awp is not None:
            awp.after_step()

    stepper.after_step = after_step
    return before_step, stepper


def _output_distill_loss(outputs: OutputDistill, prep: Prepared):
    """The batch loss of output distillation: mean over examples of ℓ_i + λ·KL_i (Opacus'
    per-sample gradients are those of each example's own term, clipped together)."""
    if prep.kind == "causal-lm":
        from dp_audit.trainers.causal_lm import lm_nll_from_logits as base_each
    else:
        def base_each(logits, batch):
            return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    return lambda model, batch: outputs.loss_each(model, batch, base_each).mean()


def prefix_offset(model) -> int:
    """The first encoder layer that has a prefix: L − k with ``model.prefix_layers = k``
    (dp_audit.prefix_layers), else 0. Prefix layer j (PrefixLayout's index) is encoder layer
    offset + j."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    return int(getattr(body, "_dp_audit_prefix_offset", 0) or 0)


def awp_micro_batch(cfg: RunConfig) -> int:
    """Paper-mode AWP micro-batch: ``awp_micro_batch`` or that fraction of the expected batch (>= 1)."""
    f = cfg.dpflat
    return f.awp_micro_batch or max(1, int(round(f.awp_micro_batch_fraction * cfg.train.batch_size)))


def _fit_whitebox(prep: Prepared, model, generator: torch.Generator) -> TrainResult:
    cfg, f = prep.cfg, prep.cfg.dpflat
    layout = layout_of(model)
    if f.sparse and f.sparse_k >= layout.num_layers:
        raise UsageError(f"dpflat.sparse_k = {f.sparse_k} must be below the model's {layout.num_layers} layers")
    frozen = [] if f.train_head else freeze_head(model)
    refs = _References(model, prep)
    notes: dict[str, Any] = {"modes": {"awp": f.awp_mode if f.awp else None,
                                       "sparse": f.sparse_mode if f.sparse else None,
                                       "distill": f.distill_mode if f.distill else None},
                             "head": "trainable" if f.train_head else "frozen", "frozen_parameters": frozen,
                             "prefixed_encoder_layers": [prefix_offset(model) + j for j in range(layout.num_layers)]}

    removed: list[int] = []
    if f.sparse and f.sparse_k > 0:
        probe = probe_data(prep, f.sparse_mode)
        _load(model, refs.selection())
        removed, rounds = select_layers(model, probe, layout=layout, k=f.sparse_k, points=f.sparse_probe_points,
                                        batch_size=cfg.train.max_physical_batch_size)
        offset = prefix_offset(model)
        notes["sparse"] = {"removed_layers": removed, "removed_encoder_layers": [offset + r for r in removed],
                           "reference": refs.info["selection"],
                           "probe_split": "dev (private)" if f.sparse_mode == "paper" else "public (held out)",
                           "rounds": [[c.to_dict() for c in r] for r in rounds]}

    mask = layout.mask(removed) if removed else None
    distill = outputs = None
    if f.distill:
        w_index = [i for i, p in enumerate(trainable_parameters(model)) if p is prefix_weight(model)][0]
        anchor = refs.teacher(mask)[w_index].clone()
        if mask is not None:
            anchor = anchor * mask
        if f.distill_target == "outputs":  # KL to the teacher's outputs, inside each example's clipped loss
            outputs = OutputDistill(weight=prefix_weight(model), anchor=anchor, lam=f.distill_lambda)
        else:
            distill = Distill(anchor=anchor, lam=f.distill_lambda, mode=f.distill_mode)
        notes["distill"] = {"reference": "private" if f.distill_mode == "paper" else "public", "lambda": f.distill_lambda,
                            "target": f.distill_target}
    refs.restore()
    notes["reference_training"] = refs.info
    del refs

    weight = prefix_weight(model)
    removed_norm_sq = 0.0
    if mask is not None:
        with torch.no_grad():
            removed_norm_sq = float((weight.detach() * (1 - mask)).norm()) ** 2
            weight.mul_(mask)
    hook = PrefixHook(model)
    hook.mask = mask
    setup = plan(cfg, prep.n_train)
    canaries = None
    if cfg.canaries.gradient:  # Dirac gradient canaries on their own audit parameter (trainers/dpflat_dirac.py)
        canaries = AuditSlotCanaries(m=cfg.canaries.gradient, norm=setup.max_grad_norm, sample_rate=setup.sample_rate,
                                     seed=cfg.canaries.seed)
    gsm, optimizer, loader = make_private(model, prep, cfg, setup, generator=generator)
    if canaries is not None:  # appends the audit parameter to the DP optimizer (not to the model)
        canaries.attach(optimizer, loader.batch_sampler.generator)
    awp = None
    if f.awp:
        awp = AWP(model=gsm, hook=hook, mode=f.awp_mode, gamma=f.awp_gamma,
                  active_steps=int(math.floor(f.awp_epoch_fraction * setup.steps)),
                  micro_batch=awp_micro_batch(cfg), generator=generator,
                  removed_norm_sq=removed_norm_sq if f.awp_radius == "full" else 0.0)
    before_step, stepper = attach_components(optimizer, weight, awp=awp, distill=distill, mask=mask, canaries=canaries)
    desc = f"DP-Flat (σ={setup.noise_multiplier:.2f}, removed {removed})"
    try:
        losses = run_steps(gsm, stepper, loader, setup, cfg=cfg, desc=desc, before_step=before_step,
                           loss_fn=batch_loss_fn(prep) if outputs is None else _output_distill_loss(outputs, prep),
                           after_backward=None if canaries is None else canaries.after_backward)
    finally:
        if awp is not None:
            awp.restore()
        hook.remove()
    model = unwrap(gsm)
    if awp is not None:
        notes["awp"] = {"mode": f.awp_mode, "gamma": f.awp_gamma, "active_steps": awp.active_steps,
                        "applied": awp.applied, "micro_batch": awp.micro_batch if f.awp_mode == "paper" else None,
                        "radius": f.awp_radius, "removed_norm": removed_norm_sq ** 0.5,
                        "mean_relative_norm": float(sum(awp.rel_norms) / len(awp.rel_norms)) if awp.rel_norms else None}
    if distill is not None or outputs is not None:
        notes["distill"]["final_distance"] = distill_value(prefix_weight(model), (distill or outputs).anchor)
    unacc = unaccounted_whitebox(cfg, removed=removed)
    ledger = ledger_for(setup, component="dpflat-dpsgd", unaccounted=unacc,
                        observed=observed_mechanism(optimizer, loader, steps=stepper.released))
    extra = {"dp": dict(setup.__dict__), "dpflat": notes}
    if canaries is not None:
        ledger["gradient_canaries"] = extra["gradient_canaries"] = canaries.ledger_entry()
    return TrainResult(
        model=model, ledger=ledger, claim=claim_for(setup, cfg, unaccounted=unacc),
        metrics={"steps": setup.steps},
        private_metrics={"final_train_loss": losses[-1] if losses else float("nan")},
        extra=extra, files={} if canaries is None else canaries.files(),
    )


# --------------------------------------------------------------------------- black-box

def _fit_blackbox(prep: Prepared, model, generator: torch.Generator) -> TrainResult:
    """Cross-model flattening on DP-ZO: per-example loss CE_i + λ‖θ − θ_np‖_F (all trainable
    parameters), where θ_np is trained without privacy by zeroth-order SGD (MeZO: the closed-model
    setting has no gradients) on the private split (paper) or the public split (public). The
    regulariser is inside the per-example scalar, so it is clipped with it."""
    cfg, f = prep.cfg, prep.cfg.dpflat
    zplan = plan_zo(cfg, prep.n_train)
    params = trainable_parameters(model)
    init = _snapshot(model)
    source = "private" if f.distill_mode == "paper" else "public"
    data = teacher_data(prep, f.distill_mode)
    n_src = int(data["labels"].shape[0])
    q_np = min(1.0, cfg.train.batch_size / n_src)
    np_steps = run_zo(model, params, data, steps=f.distill_epochs * int(round(1 / q_np)), sample_rate=q_np,
                      lr=cfg.train.lr, scale=cfg.dpzo.perturbation_scale, clip=None, noise="none", noise_scale=0.0,
                      private=False, generator=generator, restore=cfg.dpzo.restore, loss_fn=per_example_loss_fn(prep),
                      chunk=cfg.train.max_physical_batch_size, progress=cfg.train.progress,
                      desc=f"non-private ZO reference ({source})")
    anchors = _snapshot(model)
    _load(model, init)
    lam = f.distill_lambda
    each_loss = per_example_loss_fn(prep)  # cross-entropy, or a causal LM's per-example NLL

    def loss_fn(m, batch) -> torch.Tensor:
        reg = torch.sqrt(sum(((p - a) ** 2).sum() for p, a in zip(params, anchors)))
        return each_loss(m, batch) + lam * reg

    steps = train_dpzo(model, prep, zplan, generator=generator, loss_fn=loss_fn,
                       desc=f"black-box DP-Flat ({zplan.noise})")
    unacc = unaccounted_blackbox(cfg)
    dist = float(torch.sqrt(sum(((p.detach() - a) ** 2).sum() for p, a in zip(params, anchors))))
    stats = zo_metrics(steps)
    reference = {"reference": source, "lambda": lam, "final_distance": dist, "reference_steps": len(np_steps)}
    if source == "public":  # the reference's training loss on private data is not released
        reference["reference_final_loss"] = zo_metrics(np_steps)["final_train_loss"]
    return TrainResult(
        model=model, ledger=ledger_zo(zplan, component="dpflat-blackbox", unaccounted=unacc,
                                      observed=observed_zo(steps, zplan)),
        claim=claim_zo(zplan, cfg, unaccounted=unacc), metrics={"steps": stats.pop("steps")}, private_metrics=stats,
        extra={"dpzo": {**asdict(zplan), "noise_scale": zplan.noise_scale},
               "dpflat": {"blackbox": True, "modes": {"distill": f.distill_mode},
                          "distill": reference}},
    )


@TRAINERS.register("dpflat")
class DPFlatTrainer:
    name = "dpflat"

    def fit(self, prep: Prepared, model, *, generator: torch.Generator) -> TrainResult:
        if prep.cfg.dpflat.blackbox:
            return _fit_blackbox(prep, model, generator)
        return _fit_whitebox(prep, model, generator)


__all__ = ["DPFlatTrainer", "Splits", "attach_components", "awp_micro_batch", "derived_generator", "freeze_head",
           "probe_data", "public_splits", "selection_data", "teacher_data", "unaccounted_blackbox",
           "unaccounted_whitebox"]
