"""DP-SGD (Abadi et al. 2016) through Opacus: Poisson sampling, per-sample clipping to C, Gaussian
noise σC, noise multiplier from the target (ε, δ) with the RDP or PRV accountant.

``privacy.inject_bug`` reproduces known implementation bugs for the gate's regression suite
(DESIGN.md §11); the ledger then records what the buggy pipeline *believes* it did.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from dp_audit.config import RunConfig
from dp_audit.records import PrivacyClaim
from dp_audit.trainers.base import (TRAINERS, Prepared, TrainResult, noise_generator, noise_record, poisson_steps,
                                   sampling_generator)
from dp_audit.trainers.causal_lm import batch_loss_fn
from dp_audit.trainers.modeling import INPUT_KEYS, input_keys, make_optimizer, model_inputs, trainable_parameters

_HUGE_CLIP = 1e6


@dataclass(frozen=True)
class DPSetup:
    noise_multiplier: float  # what the optimizer really uses is recorded separately on purpose
    sample_rate: float  # true Poisson rate of the sampler: q = B/n
    steps: int
    max_grad_norm: float
    accounted_sample_rate: float  # what the accountant was told (differs only under a bug)
    expected_batch_size: float = 0.0  # qn, the normaliser of the noisy sum (0: sample_rate × n)
    reproducible_noise: bool = False  # noise seeded from train.seed (replayable) instead of OS entropy


def gaussian_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps, from an Opacus accountant."""
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def plan(cfg: RunConfig, n: int) -> DPSetup:
    from opacus.accountants.utils import get_noise_multiplier

    q, steps = poisson_steps(n, cfg.train.batch_size, cfg.train.epochs)
    q_acc = q / 10 if cfg.privacy.inject_bug == "accountant-rate-10x-smaller" else q
    sigma = cfg.privacy.noise_multiplier or get_noise_multiplier(
        target_epsilon=cfg.privacy.epsilon, target_delta=cfg.privacy.delta, sample_rate=q_acc, steps=steps,
        accountant=cfg.privacy.accountant, epsilon_tolerance=0.01,
    )
    return DPSetup(noise_multiplier=float(sigma), sample_rate=q, steps=steps,
                   max_grad_norm=cfg.privacy.max_grad_norm, accounted_sample_rate=q_acc,
                   expected_batch_size=float(min(cfg.train.batch_size, n)),
                   reproducible_noise=cfg.privacy.reproducible_noise)


def grad_sample_mode(cfg: RunConfig) -> str:
    """Per-sample gradient mode: Opacus' ``hooks`` / ``ghost``, or ``bk`` (book-keeping,
    :mod:`dp_audit.trainers.dpsgd_bk`: one backward pass). ``auto`` is hooks: on the demo model ghost clipping
    (norms without materialising per-sample gradients, at the price of a second backward pass)
    measured slower (benchmarks/dp_overhead.py: 2.95x vs 2.10x a non-private step); it pays off
    for larger layers, so it stays available as ``privacy.grad_sample_mode = "ghost"``. On MiniLM
    with full fine-tuning only ``bk`` stays within 1.3x a non-private step (hooks 18.9x, ghost
    1.8x; benchmarks/minilm_costs.py, docs/trainers.md "Cost ratios")."""
    mode = cfg.privacy.grad_sample_mode
    return "hooks" if mode == "auto" else mode


def make_private(model, prep: Prepared, cfg: RunConfig, setup: DPSetup, *, generator: torch.Generator,
                 params: list[torch.nn.Parameter] | None = None, mode: str | None = None, noise_stream: int = 0):
    """Wrap model/optimizer/loader with Opacus; returns (grad-sample module, DP optimizer, loader).

    The Poisson batches come from :func:`~dp_audit.trainers.base.sampling_generator` (OS entropy;
    ``generator`` with ``setup.reproducible_noise``). The loader samples every example with probability
    exactly ``setup.sample_rate`` (q = B/n, the accounted rate; Opacus' own loader would use
    1/⌈n/B⌉), the optimizer divides the noisy sum by ``setup.expected_batch_size`` (qn; Opacus:
    ⌊n/⌈n/B⌉⌋), and Opacus' accountant hook counts every step at that rate (kept on the optimizer
    as ``dp_accountant``). The noise comes from :func:`dp_audit.trainers.base.noise_generator`:
    OS entropy, or train.seed with ``setup.reproducible_noise``.

    In ghost mode the loss must go through the criterion Opacus returns: it is kept on the
    module as ``dp_criterion`` and :func:`run_steps` uses it."""
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    keys = (*input_keys(prep.train), "labels")
    ds = torch.utils.data.TensorDataset(*(prep.train[k] for k in keys))
    sampler = sampling_generator(reproducible=setup.reproducible_noise, generator=generator)
    loader = DPDataLoader(ds, sample_rate=setup.sample_rate, generator=sampler)
    params = params if params is not None else trainable_parameters(model)
    optimizer = make_optimizer(params, name=cfg.train.optimizer, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    engine = PrivacyEngine(accountant=cfg.privacy.accountant)
    mode = mode or grad_sample_mode(cfg)
    noise = noise_generator(reproducible=setup.reproducible_noise, train_seed=cfg.train.seed, stream=noise_stream)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=setup.noise_multiplier,
            max_grad_norm=setup.max_grad_norm, poisson_sampling=False,  # the loader above already is Poisson at q
            noise_generator=noise, criterion=torch.nn.CrossEntropyLoss(),
            grad_sample_mode="ghost" if mode == "bk" else mode,  # bk: Opacus' ghost optimizer, our clipped sum
        )
    if mode == "bk":  # book-keeping (trainers/dpsgd_bk.py) computes p.grad = the clipped sum; Opacus adds the noise
        from dp_audit.trainers.dpsgd_bk import BookKeeping

        gsm, optimizer, _, loader = out
        gsm.remove_hooks()  # Opacus' ghost hooks would do a second backward pass
        gsm.dp_bookkeeping = BookKeeping(gsm._module, clip_source=gsm)
        gsm.dp_criterion = gsm.dp_bookkeeping.loss
        optimizer.accumulate = _alias_accumulate(optimizer)
    elif mode == "ghost":
        gsm, optimizer, criterion, loader = out
        gsm.dp_criterion = criterion
    else:
        gsm, optimizer, loader = out
    loader.batch_keys = keys  # the model's inputs (trainers.modeling.input_layout) and the labels
    gsm.forbid_grad_accumulation()  # as Opacus does for its Poisson loaders
    optimizer.expected_batch_size = setup.expected_batch_size or setup.sample_rate * len(ds)
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=loader.sample_rate))
    optimizer.dp_accountant = engine.accountant
    _inject_bug(optimizer, cfg, setup, module=gsm)
    return gsm, optimizer, loader


def _alias_accumulate(optimizer):
    """Opacus' fast-gradient-clipping ``accumulate`` deep-copies every ``p.grad`` into
    ``p.summed_grad`` (one step, no accumulation: the loader forbids it); in ``bk`` mode p.grad is a
    fresh tensor of the book-keeping pass, so it is taken as the sum without a copy (``add_noise``
    then writes p.grad = summed_grad + noise, a new tensor). Saves a copy of the model per step."""

    def accumulate() -> None:
        for p in optimizer.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.data)
            else:
                p.summed_grad = p.grad.data

    return accumulate


def _clips_in_module(module) -> bool:
    """Ghost clipping: the module computes the clipping coefficients from its own max_grad_norm
    (Opacus GradSampleModuleFastGradientClipping); with hooks the optimizer clips."""
    return module is not None and hasattr(module, "get_clipping_coef")


def _inject_bug(optimizer, cfg: RunConfig, setup: DPSetup, *, module=None) -> None:
    bug = cfg.privacy.inject_bug
    if bug == "no-noise":
        optimizer.noise_multiplier = 0.0
    elif bug == "no-clip":  # per-sample gradients unclipped, noise std still σ·C
        optimizer.noise_multiplier = setup.noise_multiplier * setup.max_grad_norm / _HUGE_CLIP
        optimizer.max_grad_norm = _HUGE_CLIP
        if _clips_in_module(module):  # ghost: the coefficients come from the module's norm
            module.max_grad_norm = _HUGE_CLIP
    elif bug == "noise-multiplier-ignored":  # noise std C instead of σ·C
        optimizer.noise_multiplier = 1.0


def counted_steps(optimizer) -> int | None:
    """The noise releases Opacus' accountant counted (None: no accountant attached)."""
    acc = getattr(optimizer, "dp_accountant", None)
    history = getattr(acc, "history", None)
    return None if history is None else int(sum(int(h[-1]) for h in history))


def observed_mechanism(optimizer, loader, *, steps: int, module=None) -> dict[str, Any]:
    """The mechanism as run, read back from Opacus after training: the noise std is the
    optimizer's ``noise_multiplier·max_grad_norm``, on a sum of gradients clipped to the norm
    that really clipped them (the optimizer's with hooks; ghost clipping: the module's, pass it
    as ``module``), so the effective σ is noise std / clip norm; the Poisson rate is the data
    loader's; ``steps`` is what Opacus' accountant counted (noise-only steps on empty batches
    included), ``planned_steps`` the loop's target. The ledger's accounted fields say what the
    pipeline believed (DESIGN.md §6)."""
    counted = counted_steps(optimizer)
    std = float(optimizer.noise_multiplier) * float(optimizer.max_grad_norm)
    clip = float(module.max_grad_norm) if _clips_in_module(module) else float(optimizer.max_grad_norm)
    return {"noise_multiplier": std / clip, "max_grad_norm": clip,
            "sample_rate": _loader_rate(loader),
            "steps": int(steps if counted is None else counted), "planned_steps": int(steps),
            "expected_batch_size": float(optimizer.expected_batch_size),
            "source": "opacus DPOptimizer, DPDataLoader and accountant after training"}


def _loader_rate(loader) -> float:
    rate = getattr(loader, "sample_rate", None)
    if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise RuntimeError(f"the DP data loader has no valid Poisson sample rate ({rate!r}): the mechanism as "
                           "run cannot be recorded")  # a dp-audit defect, not the user's: exit 4
    return float(rate)


def ledger_for(setup: DPSetup, *, component: str = "dpsgd", unaccounted: list[dict[str, Any]] | None = None,
               observed: dict[str, Any] | None = None) -> dict:
    event = {"mechanism": "subsampled_gaussian", "component": component,
             "noise_multiplier": setup.noise_multiplier, "sample_rate": setup.accounted_sample_rate,
             "steps": setup.steps, "sensitivity": setup.max_grad_norm}
    if observed is not None:
        event["observed"] = observed
    return {"events": [event], "unaccounted": list(unaccounted or []),
            "noise": noise_record(reproducible=setup.reproducible_noise)}


def claim_for(setup: DPSetup, cfg: RunConfig, *, unaccounted: list[dict[str, Any]] | None = None) -> PrivacyClaim:
    eps = gaussian_epsilon(noise_multiplier=setup.noise_multiplier, sample_rate=setup.accounted_sample_rate,
                           steps=setup.steps, delta=cfg.privacy.delta, accountant=cfg.privacy.accountant)
    return PrivacyClaim(epsilon=eps, delta=cfg.privacy.delta, accountant=cfg.privacy.accountant,
                        unaccounted=list(unaccounted or []))


def is_empty(batch: dict) -> bool:
    """An empty Poisson batch (a noise-only step: the accountant counts it, the noise is released)."""
    return int(batch["labels"].shape[0]) == 0


def _dp_optimizer(optimizer):
    """The Opacus DPOptimizer inside ``optimizer`` (wrappers keep it as ``.optimizer``)."""
    from opacus.optimizers import DPOptimizer

    inner = optimizer
    while not isinstance(inner, DPOptimizer):
        inner = getattr(inner, "optimizer", None)
        if inner is None:
            raise TypeError("noise_only_step needs an Opacus DPOptimizer (or a wrapper keeping it as .optimizer)")
    return inner


def noise_only_step(optimizer, *, before_release: Callable[[], None] | None = None):
    """The step of an empty Poisson batch: the clipped sum is 0, so the update releases noise only,
    N(0, σ²C²)/(qn) per coordinate before the inner optimiser; Opacus' accountant hook (and any
    other step hook) runs as for any step. Call after ``zero_grad``; ``optimizer`` may be a wrapper
    whose ``step`` calls the DPOptimizer's (DP-Flat's), it is the one stepped."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    dp = _dp_optimizer(optimizer)
    for p in dp.params:
        if isinstance(dp, DPOptimizerFastGradientClipping):  # ghost: the summed clipped gradient is p.grad
            p.grad = torch.zeros_like(p)
        else:  # hooks: zero per-sample gradients of an empty batch
            p.grad_sample = p.new_zeros((0, *p.shape))
    if before_release is not None:  # e.g. Dirac canaries sampled into an otherwise empty batch
        before_release()
    return optimizer.step()


def run_steps(gsm, optimizer, loader, setup: DPSetup, *, cfg: RunConfig, desc: str,
              before_step: Callable[[int, dict], None] | None = None, loss_fn: Callable | None = None,
              after_backward: Callable[[int, int], None] | None = None) -> list[float]:
    """The DP training loop: exactly ``setup.steps`` Poisson batches, empty ones included (each a
    :func:`noise_only_step`); returns the mean losses of the non-empty batches (statistics of the
    private data: not for release). ``after_backward(step, batch_size)`` runs once per step after
    the per-sample gradients exist and before the optimizer clips them (Dirac canaries)."""
    gsm.train()
    losses: list[float] = []
    bar = tqdm(total=setup.steps, desc=desc, disable=not cfg.train.progress, leave=False)
    step = 0
    while step < setup.steps:
        for tensors in loader:
            if step >= setup.steps:
                break
            batch = dict(zip(getattr(loader, "batch_keys", (*INPUT_KEYS, "labels")), tensors))
            optimizer.zero_grad(set_to_none=True)
            if before_step is not None:
                before_step(step, batch)
            if is_empty(batch):
                noise_only_step(optimizer, before_release=None if after_backward is None
                                else (lambda: after_backward(step, 0)))
            else:
                loss = (loss_fn or _ce)(gsm, batch)
                with warnings.catch_warnings():  # Opacus' full backward hooks on frozen inputs: harmless
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                if after_backward is not None:
                    after_backward(step, int(batch["labels"].shape[0]))
                optimizer.step()
                losses.append(float(loss.detach()))
            step += 1
            # no loss in the bar: stderr ends up in CI logs and train.log files, and a batch's
            # loss is a statistic of the private data computed without noise
            bar.update(1)
    bar.close()
    return losses


def _ce(model, batch) -> torch.Tensor:
    logits = model(**model_inputs(batch)).logits
    criterion = getattr(model, "dp_criterion", None)  # ghost clipping: Opacus' wrapped loss
    if criterion is not None:
        return criterion(logits, batch["labels"])
    return torch.nn.functional.cross_entropy(logits, batch["labels"])


def unwrap(gsm) -> Any:
    """The trained model without Opacus hooks."""
    model = gsm._module if hasattr(gsm, "_module") else gsm
    if hasattr(gsm, "remove_hooks"):
        gsm.remove_hooks()
    bk = getattr(gsm, "dp_bookkeeping", None)
    if bk is not None:
        bk.remove()
    for p in model.parameters():
        p.grad_sample = None
        if hasattr(p, "_norm_sample"):
            p._norm_sample = None
    return model


@TRAINERS.register("dpsgd")
class DPSGDTrainer:
    name = "dpsgd"

    def fit(self, prep: Prepared, model, *, generator: torch.Generator) -> TrainResult:
        cfg = prep.cfg
        setup = plan(cfg, prep.n_train)
        canaries = dirac_canaries(model, cfg, setup)  # None unless canaries.gradient > 0; reads w_0 first
        gsm, optimizer, loader = make_private(model, prep, cfg, setup, generator=generator)
        hook = None if canaries is None else canaries.hook(_dp_optimizer(optimizer).params,
                                                           loader.batch_sampler.generator,
                                                           optimizer=_dp_optimizer(optimizer))
        losses = run_steps(gsm, optimizer, loader, setup, cfg=cfg, desc=f"DP-SGD (σ={setup.noise_multiplier:.2f})",
                           after_backward=hook, loss_fn=batch_loss_fn(prep))
        # an injected bug is not listed as unaccounted: the ledger says what the buggy pipeline believes
        ledger = ledger_for(setup, observed=observed_mechanism(optimizer, loader, steps=setup.steps, module=gsm))
        extra = {"dp": {**setup.__dict__, "inject_bug": cfg.privacy.inject_bug}}
        if canaries is not None:
            ledger["gradient_canaries"] = extra["gradient_canaries"] = canaries.ledger_entry()
        return TrainResult(
            model=unwrap(gsm), ledger=ledger, claim=claim_for(setup, cfg), metrics={"steps": setup.steps},
            private_metrics={"final_train_loss": losses[-1] if losses else float("nan")},
            extra=extra, files={} if canaries is None else canaries.files(),
        )


def dirac_canaries(model, cfg: RunConfig, setup: DPSetup):
    """The run's Dirac gradient canaries (``canaries.gradient``), or None (docs/whitebox.md)."""
    if not cfg.canaries.gradient:
        return None
    from dp_audit.trainers.dirac import DiracCanaries, position_slot

    return DiracCanaries(position_slot(model, max_length=cfg.data.max_length), m=cfg.canaries.gradient,
                         norm=setup.max_grad_norm, sample_rate=setup.sample_rate, seed=cfg.canaries.seed)
