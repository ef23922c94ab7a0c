"""Accounting cross-check: recompute ε from a run's ledger (docs/formats.md, ``ledger.json``) with
three accountants and compare with the claim (DESIGN.md §6).

- ``rdp``: Opacus ``RDPAccountant`` (Mironov 2017; Mironov, Talwar & Zhang 2019);
- ``prv``: Opacus ``PRVAccountant`` (Gopi, Lee & Wutschitz 2021);
- ``pld``: dp_accounting ``PLDAccountant`` (Doroshenko et al. 2022) over
  ``PoissonSampledDpEvent(GaussianDpEvent)`` / ``LaplaceDpEvent`` events.

Laplace events (pure ε per step ε₀, sampled with rate q) also get the closed form
``pure = T·ln(1 + q(e^{ε₀} − 1))`` (amplification by subsampling, e.g. Balle et al. 2018);
Opacus accountants do not cover Laplace and report None.
Opacus and dp_accounting are imported inside functions: importing this module stays light.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dp_audit.errors import UsageError

ACCOUNTANTS = ("rdp", "prv", "pld")
MECHANISMS = ("subsampled_gaussian", "subsampled_laplace", "none")


def _number(ev: Mapping[str, Any], key: str, i: int, *, integer: bool = False, where: str = "") -> float:
    """``ev[key]`` as a finite number (:func:`_finite_number`); an integer for counts."""
    value = _finite_number(ev.get(key), f"ledger event {i}: {where}{key}")
    if integer and not value.is_integer():
        raise UsageError(f"ledger event {i}: {where}{key} must be a whole number, got {value!r}")
    return int(value) if integer else value


def _events(ledger: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(ledger, Mapping) or not isinstance(ledger.get("events", []), list):
        raise UsageError("ledger must be an object with an 'events' list (docs/formats.md)")
    out = []
    for i, ev in enumerate(ledger.get("events", [])):
        mech = ev.get("mechanism") if isinstance(ev, Mapping) else None
        if mech not in MECHANISMS:
            raise UsageError(f"ledger event {i}: unknown mechanism {mech!r}; known: {', '.join(MECHANISMS)}")
        if mech == "none":
            continue
        need = ("noise_multiplier", "sample_rate", "steps") if mech == "subsampled_gaussian" else \
            ("epsilon_step", "sample_rate", "steps")
        missing = [k for k in need if k not in ev]
        if missing:
            raise UsageError(f"ledger event {i} ({mech}): missing {', '.join(missing)}")
        q, steps = _number(ev, "sample_rate", i), _number(ev, "steps", i, integer=True)
        if not 0 < q <= 1 or steps < 0:
            raise UsageError(f"ledger event {i}: need 0 < sample_rate <= 1 and steps >= 0")
        if mech == "subsampled_gaussian" and _number(ev, "noise_multiplier", i) <= 0:
            raise UsageError(f"ledger event {i}: noise_multiplier must be > 0 for an accounted Gaussian")
        if mech == "subsampled_laplace" and _number(ev, "epsilon_step", i) <= 0:
            raise UsageError(f"ledger event {i}: epsilon_step must be > 0")
        out.append(dict(ev))
    return out


def _finite_number(value: Any, where: str) -> float:
    """A ledger number: int or float (not bool, not a string), finite. JSON readers accept NaN and
    Infinity; a NaN σ or q would otherwise reach the accountants (the PRV discretisation then
    never terminates) and an infinite step count crashes int()."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _opacus(kind: str, events: list[dict[str, Any]], delta: float) -> float | None:
    if any(e["mechanism"] != "subsampled_gaussian" for e in events):
        return None
    if kind == "rdp":
        from opacus.accountants import RDPAccountant as Acc
    else:
        from opacus.accountants import PRVAccountant as Acc
    acc = Acc()
    acc.history = [(float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"]))
                   for e in events if int(e["steps"]) > 0]
    if not acc.history:
        return 0.0
    return float(acc.get_epsilon(delta))


def _dp_event(e: dict[str, Any]):
    import dp_accounting

    if e["mechanism"] == "subsampled_gaussian":
        inner = dp_accounting.GaussianDpEvent(float(e["noise_multiplier"]))
    else:
        inner = dp_accounting.LaplaceDpEvent(1.0 / float(e["epsilon_step"]))  # sensitivity 1, scale 1/ε₀
    q = float(e["sample_rate"])
    ev = inner if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, inner)
    return dp_accounting.SelfComposedDpEvent(ev, int(e["steps"]))


def _pld(events: list[dict[str, Any]], delta: float) -> float:
    import dp_accounting

    events = [e for e in events if int(e["steps"]) > 0]
    if not events:
        return 0.0
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(dp_accounting.ComposedDpEvent([_dp_event(e) for e in events]))
    return float(acc.get_epsilon(delta))


def laplace_pure_epsilon(*, epsilon_step: float, sample_rate: float, steps: int) -> float:
    """T·ln(1 + q(e^{ε₀} − 1)): T-fold composition of a q-subsampled ε₀-DP step (pure DP)."""
    return steps * math.log1p(sample_rate * math.expm1(epsilon_step))


def epsilon_from_ledger(ledger: Mapping[str, Any], *, delta: float, accountant: str) -> float | None:
    """ε at δ of the ledger's accounted events with one accountant (None: not applicable)."""
    if accountant not in ACCOUNTANTS + ("pure",):
        raise UsageError(f"unknown accountant {accountant!r}; known: {', '.join(ACCOUNTANTS)}, pure")
    if not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), got {delta}")
    events = _events(ledger)
    if accountant == "pld":
        return _pld(events, delta)
    if accountant == "pure":
        if any(e["mechanism"] != "subsampled_laplace" for e in events):
            return None
        return sum(laplace_pure_epsilon(epsilon_step=float(e["epsilon_step"]), sample_rate=float(e["sample_rate"]),
                                        steps=int(e["steps"])) for e in events)
    return _opacus(accountant, events, delta)


def _disagreements(methods: Mapping[str, float | None], rtol: float) -> list[str]:
    """PRV and PLD are both near-exact: they must agree within rtol. RDP is an upper bound: it
    must not fall below them by more than rtol (it may be larger)."""
    prv, pld, rdp = methods.get("prv"), methods.get("pld"), methods.get("rdp")
    out = []
    if prv is not None and pld is not None and abs(prv - pld) > rtol * max(pld, 1e-12):
        out.append(f"accountants disagree: prv={prv:.4g} vs pld={pld:.4g}")
    tight = [v for v in (prv, pld) if v is not None]
    if rdp is not None and tight and rdp < min(tight) * (1 - rtol):
        out.append(f"accountants disagree: rdp={rdp:.4g} is below the tight accountants ({min(tight):.4g})")
    return out


def cross_check(ledger: Mapping[str, Any], *, claimed_epsilon: float, delta: float,
                rtol: float = 0.05) -> dict[str, Any]:
    """Recompute ε with every accountant and compare with the claim (the ``accounting`` block
    of audit.json). ``consistent``: some accountant agrees with the claim within ``rtol``, the
    accountants agree with each other, and nothing is left unaccounted."""
    events = _events(ledger)
    methods: dict[str, float | None] = {a: epsilon_from_ledger(ledger, delta=delta, accountant=a) for a in ACCOUNTANTS}
    if events and all(e["mechanism"] == "subsampled_laplace" for e in events):
        methods["pure"] = epsilon_from_ledger(ledger, delta=delta, accountant="pure")
    flags: list[str] = []
    vals = {k: v for k, v in methods.items() if v is not None}
    claim = float(claimed_epsilon)
    unaccounted = list(ledger.get("unaccounted", []) or [])
    for u in unaccounted:
        comp = u.get("component", "?") if isinstance(u, Mapping) else str(u)
        reason = u.get("reason", "") if isinstance(u, Mapping) else ""
        flags.append(f"unaccounted: {comp}" + (f" ({reason})" if reason else ""))
    if not events:
        flags.append("no accounted mechanism in the ledger")
    agree = False
    if vals:
        lo, hi = min(vals.values()), max(vals.values())
        flags += _disagreements(methods, rtol)
        if not math.isfinite(claim):
            flags.append("no finite claim: the run claims no privacy")
        else:
            agree = any(abs(claim - v) <= rtol * max(v, 1e-12) for v in vals.values())
            if claim < lo * (1 - rtol):
                flags.append(f"claimed ε {claim:.4g} is below every accountant's ε (min {lo:.4g}): the claim is too low")
            elif claim > hi * (1 + rtol):
                flags.append(f"claimed ε {claim:.4g} is above every accountant's ε (max {hi:.4g}): "
                             "conservative, but it does not match the ledger")
    consistent = bool(agree and not unaccounted and not any(f.startswith("accountants disagree") for f in flags))
    return {"claimed": claim, "delta": float(delta), "methods": methods, "consistent": consistent,
            "flags": flags, "rtol": rtol}


NOISE_REPLAYABLE = "noise replayable: not DP if the manifest is released"


def replayable_noise_parts(ledger: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The ledger's ``noise`` entry (written by dp-audit's DP trainers) as an unaccounted part when
    the noise is replayable (``privacy.reproducible_noise = true``: noise and Poisson batches
    seeded from train.seed, which manifest.json records). Read by the gate and the report."""
    noise = (ledger or {}).get("noise") if isinstance(ledger, Mapping) else None
    if not isinstance(noise, Mapping) or noise.get("replayable") is not True:
        return []
    return [{"component": "noise", "reason": f"{NOISE_REPLAYABLE} (source {noise.get('source', '?')}: the DP noise is "
             "regenerated from the seed recorded in manifest.json; privacy.reproducible_noise = true)"}]


# ---------------------------------------------------------------------------------------------
# the mechanism as run


def observed_events(ledger: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The events' ``observed`` records (the mechanism as run, written by dp-audit's own trainers:
    DP-SGD/DP-Flat from the optimizer and data loader, DP-ZO from the steps it took), or None when
    the ledger has none. All-Gaussian ledgers give the Gaussian records; all-Laplace ledgers
    (DP-ZO Laplace) give records tagged ``mechanism: subsampled_laplace`` with ``laplace_scale``,
    ``sensitivity``, ``sample_rate`` and ``steps``."""
    events = _events(ledger)
    if events and all(e["mechanism"] == "subsampled_laplace" for e in events):
        return _observed_laplace(events)
    obs = [e.get("observed") for e in events if e["mechanism"] == "subsampled_gaussian"]
    if not obs or any(not isinstance(o, Mapping) for o in obs) or len(obs) != len(events):
        return None
    for i, o in enumerate(obs):
        sigma, q = _number(o, "noise_multiplier", i, where="observed."), _number(o, "sample_rate", i, where="observed.")
        steps = _number(o, "steps", i, integer=True, where="observed.")
        if sigma < 0 or not 0 < q <= 1 or steps < 0:
            raise UsageError(f"ledger event {i}: observed needs noise_multiplier >= 0, 0 < sample_rate <= 1, "
                             "steps >= 0")
    return [dict(o) for o in obs]


def _observed_laplace(events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    obs = [e.get("observed") for e in events]
    if any(not isinstance(o, Mapping) for o in obs):
        return None
    out = []
    for i, o in enumerate(obs):
        b, c = _number(o, "laplace_scale", i, where="observed."), _number(o, "sensitivity", i, where="observed.")
        q = _number(o, "sample_rate", i, where="observed.")
        steps = _number(o, "steps", i, integer=True, where="observed.")
        if b < 0 or c <= 0 or not 0 < q <= 1 or steps < 0:
            raise UsageError(f"ledger event {i}: observed needs laplace_scale >= 0, sensitivity > 0, "
                             "0 < sample_rate <= 1, steps >= 0")
        out.append({**dict(o), "mechanism": "subsampled_laplace"})
    return out


def laplace_epsilon_lower(obs: list[dict[str, Any]], *, delta: float) -> float:
    """A lower bound on the ε at δ of Poisson-subsampled Laplace steps as run: dp-accounting's PLD
    with ``pessimistic_estimate=False`` (the optimistic discretisation rounds every privacy loss
    down: its ε(δ) never exceeds the true one). Scale 0: no noise, ε = ∞."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    total = None
    for i, o in enumerate(obs):
        b, c, q, steps = (_finite_number(o.get(k), f"observed record {i}: {k}")
                          for k in ("laplace_scale", "sensitivity", "sample_rate", "steps"))
        if int(steps) <= 0:
            continue
        if b <= 0:
            return math.inf
        one = pld_lib.from_laplace_mechanism(b / c, sensitivity=1.0, pessimistic_estimate=False,
                                             value_discretization_interval=1e-3, sampling_prob=min(q, 1.0),
                                             use_connect_dots=False)
        part = one.self_compose(int(steps))
        total = part if total is None else total.compose(part)
    return 0.0 if total is None else max(0.0, float(total.get_epsilon_for_delta(delta)))


SIGMA_FLOOR = 0.5  # noise multipliers below it are bounded as if they were 0.5 (a valid, looser bound)
PRV_EPS_ERROR = 0.01  # the PRV accountant's ε error: the lower bound is its estimate minus this
PRV_MAX_POINTS = 4_000_000  # largest discretisation grid (memory ~ 100 MB, about a second)
PRV_MAX_DOMAIN = 400.0  # privacy losses above it overflow exp(); larger runs are bounded on fewer steps


def observed_epsilon_lower(ledger: Mapping[str, Any], *, delta: float) -> float | None:
    """A lower bound on the ε at δ of the mechanism *as run* (the ``observed`` records), from the
    PRV accountant of Gopi, Lee & Wutschitz 2021 (arXiv 2106.02848, as implemented in Opacus): its
    discretisation brackets the true ε, ``eps_lower = ε̃(δ + δ_err) − ε_err <= ε(δ)``, with a
    mesh that shrinks like 1/√T, so the bound stays tight on long runs (a fixed-grid optimistic PLD
    rounds every step down and its bias grows like T). The subsampled Gaussian's dominating pair is
    realised by an adversary who chooses the data (a canary whose clipped gradient is orthogonal
    to the others'), so ε above the claim refutes the claim in the step-level threat model,
    without a test (no α spent). None: no records."""
    obs = observed_events(ledger)
    return None if obs is None else epsilon_lower_of_observed(obs, delta=delta)


def epsilon_lower_of_observed(obs: list[dict[str, Any]], *, delta: float) -> float:
    """:func:`observed_epsilon_lower` on records already read by :func:`observed_events`."""
    if not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), got {delta}")
    if obs and all(o.get("mechanism") == "subsampled_laplace" for o in obs):
        return laplace_epsilon_lower(obs, delta=delta)
    history = []
    for i, o in enumerate(obs):
        sigma, q, steps = (_finite_number(o.get(k), f"observed record {i}: {k}")
                           for k in ("noise_multiplier", "sample_rate", "steps"))
        steps = int(steps)
        if steps <= 0 or q <= 0:
            continue
        if sigma <= 0:
            return math.inf  # no noise: the released sum reveals the canary's presence exactly
        # ε grows as σ shrinks and as q grows, so the bound at max(σ, SIGMA_FLOOR) is still a lower
        # bound; below the floor the privacy losses span a range too wide to discretise
        history.append((max(sigma, SIGMA_FLOOR), min(q, 1.0), steps))
    if not history:
        return 0.0
    return prv_epsilon_bounds(history, delta=delta)[0]


def prv_epsilon_bounds(history: list[tuple[float, float, int]], *, delta: float,
                       eps_error: float = PRV_EPS_ERROR) -> tuple[float, float, float]:
    """(lower, estimate, upper) ε at δ of the composition of Poisson-subsampled Gaussian events
    ``(noise_multiplier, sample_rate, steps)``, from Opacus' PRV discretisation (Gopi et al. 2021,
    Theorem 5.5: the true ε lies in [lower, upper]; lower is clamped at 0).

    To keep the grid (2L / mesh points, mesh = ε_err / sqrt(T·ln(12/δ_err)/2)) under
    ``PRV_MAX_POINTS``, ε_err grows up to 0.5 (Opacus' domain rule is checked for ε_err < 1
    only); when that is not enough, or when the losses exceed ``PRV_MAX_DOMAIN``, every event's
    steps are scaled down: fewer steps of the same mechanism is a post-processing of the run (drop
    the later releases), so its lower bound is still a lower bound on the run's ε (only lower:
    the upper value then bounds the shorter run, not this one)."""
    import warnings

    import numpy as np
    from opacus.accountants.analysis import prv as prv_lib

    delta_error = delta / 1000

    def domain(hist, err):
        prvs = [prv_lib.PoissonSubsampledGaussianPRV(q, s) for s, q, _ in hist]
        steps = [t for _, _, t in hist]
        size = prv_lib.compute_safe_domain_size(prvs=prvs, max_self_compositions=steps, eps_error=err,
                                                delta_error=delta_error)
        mesh = err / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
        return prvs, steps, size, mesh

    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha" on extreme settings
        hist = list(history)
        while True:
            prvs, steps, size, mesh = domain(hist, eps_error)
            err = eps_error
            if 2 * size / mesh > PRV_MAX_POINTS:
                err = min(0.5, eps_error * 2 * size / mesh / PRV_MAX_POINTS)
                prvs, steps, size, mesh = domain(hist, err)
            if size <= PRV_MAX_DOMAIN and 2 * size / mesh <= PRV_MAX_POINTS:
                break
            if all(t <= 1 for _, _, t in hist):
                return 0.0, 0.0, math.inf  # not reached for σ >= SIGMA_FLOOR; 0 is a valid lower bound
            hist = [(s, q, max(1, t // 2)) for s, q, t in hist]
        dom = prv_lib.Domain.create_aligned(-size, size, mesh)
        dprvs = [prv_lib.discretize(prv_lib.TruncatedPrivacyRandomVariable(p, dom.t_min, dom.t_max), dom)
                 for p in prvs]
        dprv = prv_lib.compose_heterogeneous(dprvs=dprvs, num_self_compositions=steps)
        lower, estimate, upper = dprv.compute_epsilon(delta, delta_error, err)
    if hist != list(history):
        upper = math.inf  # a bound on the shorter run only
    return max(float(lower), 0.0), float(estimate), float(upper)


__all__ = ["NOISE_REPLAYABLE", "cross_check", "epsilon_from_ledger", "epsilon_lower_of_observed", "laplace_epsilon_lower",
           "laplace_pure_epsilon",
           "observed_epsilon_lower", "observed_events", "prv_epsilon_bounds", "replayable_noise_parts", "ACCOUNTANTS"]
