"""Built-in constructions (docs/awp-leak.md explains each one and why it should work).

Each builder returns a :class:`~dp_audit.stepaudit.construction.Construction` that runs a real
trainer code path on the synthetic model of :mod:`dp_audit.stepaudit.toy`:

- ``gaussian`` / ``gaussian-null``: the Gaussian mechanism itself (no trainer): a reference with a
  known answer (μ-GDP exactly), and a null where d0 = d1 (the bound must be 0);
- ``dpsgd-dirac``: one DP-SGD step through Opacus (q = 1) with a Dirac gradient canary (Nasr et al.
  2023): the canary's gradient lies on a coordinate no other example touches;
- ``dpflat-awp-paper`` / ``-dpsat`` / ``-per-example``: the same DP-SGD step with DP-Flat's real
  AWP component (trainers/dpflat_awp.py) in that mode, on a batch built so that the canary sets
  v's direction in paper mode and the other examples' clipped gradients flip with v;
- ``dpzo-gaussian`` / ``dpzo-laplace``: one DP-ZO step (trainers/zo.py ``zo_step``) with a canary
  whose SPSA scalar is clipped to ±C;
- ``dpflat-distill-{paper,public,escape}`` (:mod:`.constructions_distill`), ``dpflat-sparse-{paper,public}``
  (:mod:`.constructions_sparse`) and the real prefix-tuned transformer (:mod:`.transformer`,
  registered as ``transformer-*``).

Every builder takes keyword options (``sigma``, ``delta``, ...); the CLI passes the ones given.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from typing import Any, Callable

import torch

from dp_audit.errors import UsageError
from dp_audit.registry import Registry
from dp_audit.stepaudit.construction import Construction, gaussian_claim

CONSTRUCTIONS: Registry[Callable[..., Construction]] = Registry("construction")

DEFAULT_DELTA = 1e-5
CANARY_SCALE = 100.0  # the canary's linear coefficient: raw gradient norm ≈ 50 ≫ C
KINK_SCALE = 10.0  # a kink example's raw gradient norm ≈ 5 > C: clipped to exactly C
DECOY_SCALE = 4.0  # the decoy's raw gradient norm ≈ 2: sets v's direction without the canary


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _unit(dim: int, i: int) -> torch.Tensor:
    e = torch.zeros(dim)
    e[i] = 1.0
    return e


def projection(direction: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The statistic ⟨release, u⟩ (float64), u = direction / ‖direction‖."""
    u = (direction / direction.norm()).double()

    def statistic(releases: torch.Tensor) -> torch.Tensor:
        return releases.double() @ u

    return statistic


def build(name: str, **options: Any) -> Construction:
    """The construction ``name`` with ``options`` (UsageError for an option it does not take)."""
    builder = CONSTRUCTIONS.get(name)
    accepted = set(inspect.signature(builder).parameters)
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise UsageError(f"construction {name!r} does not take option(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(accepted)) or 'none'}")
    cons = builder(**options)
    try:
        json.dumps(options, allow_nan=False)
    except (TypeError, ValueError):  # options that are not plain data: the construction stays local
        return cons
    return dataclasses.replace(cons, spec={"name": name, "options": dict(options)})


# --------------------------------------------------------------------------- references


def _gaussian(mu: float, delta: float, *, null: bool, dim: int) -> Construction:
    mu = _positive("mu", mu)

    def step(state, mean, generator):
        return mean + torch.randn(dim, generator=generator, dtype=torch.float64)

    def batched(state, mean, generator, n):
        return mean + torch.randn(n, dim, generator=generator, dtype=torch.float64)

    shift = torch.zeros(dim, dtype=torch.float64)
    if not null:
        shift[0] = mu
    name = "gaussian-null" if null else "gaussian"
    desc = ("null: d0 and d1 identical (N(0, I) both); any ε_LB > 0 is a false positive" if null else
            f"the Gaussian mechanism N(0, I) vs N(μ e0, I): exactly {mu:g}-GDP")
    return Construction(name=name, description=desc, step_fn=step, state=None, d0=torch.zeros(dim, dtype=torch.float64),
                        d1=shift, statistic=projection(_unit(dim, 0)), batched_step_fn=batched,
                        info={"mu": mu, "dim": dim, "null": null}, **gaussian_claim(mu, delta))


@CONSTRUCTIONS.register("gaussian")
def gaussian(*, mu: float = 1.0, delta: float = DEFAULT_DELTA, dim: int = 1) -> Construction:
    """The Gaussian mechanism N(0, I) vs N(μ e0, I): exactly μ-GDP (a reference, no trainer)."""
    return _gaussian(mu, delta, null=False, dim=dim)


@CONSTRUCTIONS.register("gaussian-null")
def gaussian_null(*, mu: float = 1.0, delta: float = DEFAULT_DELTA, dim: int = 1) -> Construction:
    """A null: d0 and d1 identical; every ε_LB > 0 is a false positive."""
    return _gaussian(mu, delta, null=True, dim=dim)


# --------------------------------------------------------------------------- DP-SGD and DP-Flat


def _opacus_construction(name: str, description: str, model, *, state: dict, d0: list[int], d1: list[int],
                         direction: torch.Tensor, sigma: float, clip: float, delta: float, awp_mode: str | None,
                         gamma: float, info: dict, examples=None) -> Construction:
    from dp_audit.stepaudit.opacus_step import OpacusStep
    from dp_audit.stepaudit.replicas import ReplicaSteps
    from dp_audit.stepaudit.toy import toy_batch

    runner = OpacusStep(model, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=len(d1),
                        awp_mode=awp_mode, gamma=gamma, micro_batch=len(d1))
    # k steps batched over replicas: plain DP-SGD only (AWP's norms would mix replicas)
    replicas = (ReplicaSteps(examples, tokens=model.tokens, width=model.width, noise_multiplier=sigma,
                             max_grad_norm=clip, expected_batch_size=len(d1))
                if awp_mode is None and examples is not None else None)
    return Construction(name=name, description=description, step_fn=runner.step, state=state,
                        d0=toy_batch(model, d0), d1=toy_batch(model, d1), statistic=projection(direction),
                        batched_step_fn=runner.batched, advance=runner.advance, batched_steps_fn=replicas,
                        info={**info, "sigma": sigma, "clip": clip, "batch_size_d1": len(d1), "sample_rate": 1.0,
                              "release": "update P_after - P_before (SGD, lr 1; k steps: their sum)",
                              "statistic": "projection of the release on -e0 (the canary's descent direction)"},
                        **gaussian_claim(1.0 / sigma, delta))


def dirac_start(*, steps: int, sigma: float, clip: float, batch_size: int) -> float:
    """Initial value of the canary coordinate P[e0] for a ``steps``-step Dirac audit (0 for one step).

    The canary's raw gradient is 100·sigmoid(100·P[e0])·e0: clipped to C·e0 only while
    P[e0] ≳ −ln(100/C)/100. Each step moves P[e0] by −C/B (the canary's descent) plus noise of std
    σC/B, so starting at k·C/B + 10·σC√k/B + 0.1 keeps the canary clipped at every one of the k
    steps except with probability below 10⁻²⁰: the k-step sum then differs by exactly k·C·e0
    between the worlds, and √k/σ is tight."""
    if steps <= 1:
        return 0.0
    return (steps * clip + 10.0 * sigma * clip * math.sqrt(steps)) / batch_size + 0.1


@CONSTRUCTIONS.register("dpsgd-dirac")
def dpsgd_dirac(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, dim: int = 8,
                clip: float = 1.0, steps: int = 1, start: float | None = None) -> Construction:
    """One DP-SGD step through Opacus (q = 1) with a Dirac gradient canary; μ = 1/σ is tight.

    D: batch_size − 1 examples with random gradients on coordinates 1..dim−1; the canary's
    gradient is 50·e0 (clipped to C·e0). Release: the update; statistic: its e0 coordinate with
    the sign of the canary's descent. The clipped sums differ by exactly C·e0: μ = 1/σ is tight.
    ``steps``: the number of consecutive steps the audit will run (it only chooses the state:
    P[e0] starts at :func:`dirac_start`, or at ``start``); k steps are √k/σ-GDP, also tight."""
    from dp_audit.stepaudit.toy import ToyExample, ToyPrefixModel

    sigma, clip = _positive("sigma", sigma), _positive("clip", clip)
    if batch_size < 2 or dim < 2:
        raise UsageError("dpsgd-dirac needs batch_size >= 2 and dim >= 2")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got {steps!r}")
    p_e0 = dirac_start(steps=steps, sigma=sigma, clip=clip, batch_size=batch_size) if start is None else float(start)
    g = torch.Generator().manual_seed(0)  # the data set is part of the construction: fixed
    examples = [ToyExample(label=0, linear=tuple((CANARY_SCALE * _unit(dim, 0)).tolist()))]
    for _ in range(batch_size - 1):
        a = torch.randn(dim, generator=g) * 2
        a[0] = 0.0
        examples.append(ToyExample(label=int(torch.randint(0, 2, (1,), generator=g)), linear=tuple(a.tolist())))
    model = ToyPrefixModel(examples, tokens=1, width=dim)
    prefix = torch.zeros(1, dim)
    prefix[0, 0] = p_e0
    state = {"prefix": prefix, "previous_release": None}
    ids = list(range(batch_size))
    info = {"trainer": "dpsgd", "canary": "dirac (gradient on e0 only)"}
    if p_e0 != 0.0:
        info["start_e0"] = p_e0
    return _opacus_construction(
        "dpsgd-dirac", f"DP-SGD step (Opacus, q=1, σ={sigma:g}, C={clip:g}) with a Dirac gradient canary",
        model, state=state, d0=ids[1:], d1=ids, direction=-_unit(dim, 0), sigma=sigma, clip=clip, delta=delta,
        awp_mode=None, gamma=0.0, info=info, examples=examples)


def _awp_examples(batch_size: int, dim: int, *, kink_label: int = 0):
    from dp_audit.stepaudit.toy import ToyExample

    e0 = tuple(_unit(dim, 0).tolist())
    canary = ToyExample(label=0, linear=tuple((CANARY_SCALE * _unit(dim, 0)).tolist()))
    decoy = ToyExample(label=1, linear=tuple((DECOY_SCALE * _unit(dim, 0)).tolist()))
    # label 0: a kink example's gradient is +c·sign(⟨e0, p⟩)·e0/2, along the canary's on the side the
    # canary pushes v to, against it on the other side; its descent pulls P back to the kink.
    # label 1 (k-step audits): the gradient is −c·sign(⟨e0, p⟩)·e0/2, its descent pushes P away
    # from the kink, so the side v chose in the first step is kept (and amplified) in later steps
    kinks = [ToyExample(label=kink_label, kink=KINK_SCALE, kink_dir=e0, kink_at=0.0) for _ in range(batch_size - 2)]
    return [canary, decoy, *kinks]


def _dpflat(mode: str, *, sigma: float, delta: float, batch_size: int, dim: int, clip: float,
            gamma: float, steps: int = 1) -> Construction:
    from dp_audit.stepaudit.toy import ToyPrefixModel

    sigma, clip, gamma = _positive("sigma", sigma), _positive("clip", clip), _positive("gamma", gamma)
    if batch_size < 3 or dim < 2:
        raise UsageError("dpflat constructions need batch_size >= 3 and dim >= 2")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got {steps!r}")
    kink_label = 0 if steps == 1 else 1
    model = ToyPrefixModel(_awp_examples(batch_size, dim, kink_label=kink_label), tokens=1, width=dim)
    # P0 = e1: ‖P0‖ = 1, every example sits on its kink (⟨e0, P0⟩ = 0), so v = ±γ e0 decides
    # the side; DP-SAT's previous release points along +e0 (a public, data-independent choice)
    state = {"prefix": _unit(dim, 1).view(1, dim),
             "previous_release": _unit(dim, 0).view(1, dim) if mode == "dpsat" else None}
    ids = list(range(batch_size))  # AWP's micro-batch is the whole batch (micro_batch = |d1|): the canary is in v
    k = batch_size - 2
    expected = {"paper": (2 * k + 1) * clip, "dpsat": clip, "per-example": clip}[mode]
    desc = (f"DP-Flat step, AWP mode {mode} (γ={gamma:g}), Opacus q=1, σ={sigma:g}, C={clip:g}: canary with a "
            f"dominant raw gradient, a decoy, and {k} examples whose clipped gradient flips with v")
    info = {"trainer": "dpflat", "awp_mode": mode, "gamma": gamma, "kink_examples": k,
            **({} if steps == 1 else {"kink_label": 1, "built_for_steps": steps}),
            "expected_sensitivity": expected, "claimed_sensitivity": clip,
            "canary": "raw gradient 50*e0, in the micro-batch (the whole batch)"}
    return _opacus_construction(f"dpflat-awp-{mode}", desc, model, state=state, d0=ids[1:], d1=ids,
                                direction=-_unit(dim, 0), sigma=sigma, clip=clip, delta=delta, awp_mode=mode,
                                gamma=gamma, info=info)


def _register_dpflat(mode: str) -> None:
    def builder(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, batch_size: int = 8, dim: int = 8,
                clip: float = 1.0, gamma: float = 1e-4, steps: int = 1) -> Construction:
        return _dpflat(mode, sigma=sigma, delta=delta, batch_size=batch_size, dim=dim, clip=clip, gamma=gamma,
                       steps=steps)

    builder.__name__ = f"dpflat_awp_{mode.replace('-', '_')}"
    builder.__doc__ = (f"One DP-Flat step with AWP in mode {mode!r} (see _dpflat and docs/awp-leak.md); "
                       "steps > 1: kink examples that keep the side v chose")
    CONSTRUCTIONS.register(f"dpflat-awp-{mode}")(builder)


for _mode in ("paper", "dpsat", "per-example"):
    _register_dpflat(_mode)


# --------------------------------------------------------------------------- DP-ZO


ZO_SEED = 20240107  # the step's public seed (fixed by the auditor's choice of state)


def _dpzo(noise: str, *, sigma: float, epsilon_step: float, delta: float, clip: float, dim: int,
          others: int) -> Construction:
    from dp_audit.stepaudit.toy import ToyExample, ToyPrefixModel, toy_batch
    from dp_audit.trainers.zo import perturb_, sample_noise, spsa, zo_step

    clip = _positive("clip", clip)
    scale = 1e-3  # SPSA perturbation λ
    canary = ToyExample(label=0, linear=tuple((CANARY_SCALE * _unit(dim, 0)).tolist()))
    flat = [ToyExample(label=i % 2) for i in range(others)]  # zero features: ρ_i = 0 for every z
    model = ToyPrefixModel([canary, *flat], tokens=1, width=dim)
    params = [model.prefix]
    theta0 = torch.zeros_like(model.prefix)
    with torch.no_grad():
        model.prefix.copy_(theta0)
    rho = float(spsa(model, params, toy_batch(model, [0]), seed=ZO_SEED, scale=scale, restore="snapshot").scalars[0])
    if abs(rho) <= clip:
        raise UsageError(f"dpzo: the canary's SPSA scalar {rho:.3g} is not clipped at C={clip:g}; use a smaller clip")
    sign = 1.0 if rho > 0 else -1.0
    ids = list(range(others + 1))
    normaliser = float(len(ids))  # the expected batch size: the same constant for d0 and d1
    if noise == "gaussian":
        sigma = _positive("sigma", sigma)
        noise_scale, claim = sigma * clip, gaussian_claim(1.0 / sigma, delta)
    else:
        epsilon_step = _positive("epsilon_step", epsilon_step)
        noise_scale = clip / epsilon_step
        claim = {"claim_epsilon": epsilon_step, "delta": float(delta), "claim_mu": None,
                 "laplace_epsilon": epsilon_step}

    def advance(state, release):
        # θ ← θ − lr·g·z(seed), as zo_step updates it; the public seed stays the auditor's (DP-ZO's
        # guarantee holds for every seed sequence, so conditioning on a fixed one is a valid audit)
        with torch.no_grad():
            model.prefix.copy_(state["theta"])
        perturb_(params, seed=state["seed"], scale=-1e-3 * float(release[0]))
        return {"theta": model.prefix.detach().clone(), "seed": state["seed"]}

    def step(state, batch, generator):
        with torch.no_grad():
            model.prefix.copy_(state["theta"])
        out = zo_step(model, params, batch, seed=state["seed"], scale=scale, lr=1e-3, clip=clip, noise=noise,
                      noise_scale=noise_scale, normaliser=normaliser, generator=generator, restore="snapshot")
        return torch.tensor([out.gradient], dtype=torch.float64)

    def batched(state, batch, generator, n):
        with torch.no_grad():
            model.prefix.copy_(state["theta"])
        g0 = zo_step(model, params, batch, seed=state["seed"], scale=scale, lr=1e-3, clip=clip, noise="none",
                     noise_scale=0.0, normaliser=normaliser, generator=generator, restore="snapshot").gradient
        draws = torch.tensor([sample_noise(noise, scale=noise_scale, generator=generator) for _ in range(n)],
                             dtype=torch.float64)
        return (g0 + draws / normaliser).unsqueeze(1)

    def statistic(releases):
        return releases.double()[:, 0] * sign

    what = f"Gaussian σ={sigma:g}" if noise == "gaussian" else f"Laplace ε0={epsilon_step:g}"
    return Construction(
        name=f"dpzo-{noise}", description=f"DP-ZO step (trainers/zo.py zo_step, {what}, C={clip:g}, q=1) with a "
        f"canary whose SPSA scalar is clipped to {sign * clip:+g}", step_fn=step,
        state={"theta": theta0, "seed": ZO_SEED}, d0=toy_batch(model, ids[1:]), d1=toy_batch(model, ids),
        statistic=statistic, batched_step_fn=batched, advance=advance,
        info={"trainer": "dpzo", "noise": noise, "noise_scale": noise_scale, "clip": clip, "canary_rho": rho,
              "public_seed": ZO_SEED, "normaliser": normaliser, "release": "the scalar g (k steps: their sum)",
              "statistic": "g times the sign of the canary's clipped SPSA scalar"},
        **claim)


@CONSTRUCTIONS.register("dpzo-gaussian")
def dpzo_gaussian(*, sigma: float = 1.0, delta: float = DEFAULT_DELTA, clip: float = 1.0, dim: int = 4,
                  others: int = 3) -> Construction:
    """One DP-ZO step (zo_step) with Gaussian noise σC; a canary whose SPSA scalar is clipped."""
    return _dpzo("gaussian", sigma=sigma, epsilon_step=0.0, delta=delta, clip=clip, dim=dim, others=others)


@CONSTRUCTIONS.register("dpzo-laplace")
def dpzo_laplace(*, epsilon_step: float = 1.0, delta: float = DEFAULT_DELTA, clip: float = 1.0, dim: int = 4,
                 others: int = 3) -> Construction:
    """One DP-ZO step (zo_step) with Laplace noise C/ε0 (pure ε0-DP); a clipped canary."""
    return _dpzo("laplace", sigma=0.0, epsilon_step=epsilon_step, delta=delta, clip=clip, dim=dim, others=others)


# the second milestone's constructions register themselves on import (they use the helpers above)
from dp_audit.stepaudit import constructions_distill as _distill_constructions  # noqa: E402,F401
from dp_audit.stepaudit import constructions_sparse as _sparse_constructions  # noqa: E402,F401
from dp_audit.stepaudit import transformer as _transformer_constructions  # noqa: E402,F401

__all__ = ["CONSTRUCTIONS", "build", "dpsgd_dirac", "dpzo_gaussian", "dpzo_laplace", "gaussian", "gaussian_null",
           "projection"]
