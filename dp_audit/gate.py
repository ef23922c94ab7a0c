"""The CI gate (DESIGN.md §2, §6): recompute every (attack, estimator) bound of a run at α/K and
refute the claim when the largest exceeds it.

K is the number of counted (attack, bound estimator) pairs the maximum is taken over, so the
verdict "fail" is wrong with probability at most α overall (a union bound). ``raw`` estimates
are computed for the report but never counted, nor are μ-GDP tests (``gdp``) unless the policy
reads the claim as μ-GDP (``claim_model = "mu-gdp"``). A run without a finite claim (ε = inf)
never fails on a bound; with ``on_unaccounted = "fail"`` a run whose claim leaves parts of
training unaccounted fails.

:func:`evaluate_gate` reads and checks the run directory, then calls :func:`gate_scores`, the
pure decision on score arrays (what the null-calibration tests call); it has no side effects.
:func:`write_outputs` writes ``summary.md`` (a CI job summary) and ``gate.junit.xml`` atomically.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dp_audit.config import from_mapping, load_toml
from dp_audit.group_privacy import group_delta, per_example_bound
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.estimate import ESTIMATORS, MU_GDP_ONLY, STRATEGIES, estimate_epsilon
from dp_audit.io import atomic_write_text, load_scores, read_json
from dp_audit.manifest import load_manifest
from dp_audit.safetext import md_code, md_text
from dp_audit.records import EpsilonEstimate, Verdict

AUDIT = "audit.json"
SUMMARY = "summary.md"
JUNIT = "gate.junit.xml"


CLAIM_MODELS = ("eps-delta", "mu-gdp")
ON_UNACCOUNTED = ("warn", "fail")


@dataclass(frozen=True)
class GatePolicy:
    """``gate.toml``: which attacks and estimators count, α, tolerance, threshold strategy.

    ``attacks = "all"`` (default) or a list of attack names from audit.json; ``estimators``
    lists bound methods (default ``["fdp"]``: the one-run f-DP test alone gets all of α; add
    ``"steinke"`` to split α with it; ``raw`` may be listed, it is reported, never counted);
    ``tolerance`` is added to the claim before comparing; ``seed`` seeds tie-breaking and
    held-out splits.
    ``claim_model``: how the claim is read: ``"eps-delta"`` (default: (ε, δ)-DP) or ``"mu-gdp"``
    (the claim is declared μ-GDP with the μ whose curve passes through (ε, δ)). Tests of μ-GDP
    (the multi-run ``gdp`` estimator) are counted only under ``"mu-gdp"``; otherwise they are
    reported, labelled "valid only under a μ-GDP claim", and not counted (a warning), and a
    policy whose only bound is ``gdp`` is a usage error. ``fdp_null = "gdp"`` is itself a μ-GDP
    reading of the claim: it implies ``claim_model = "mu-gdp"`` (and contradicts an explicit
    ``"eps-delta"``).
    ``exposure_bound`` (default true): an attack whose audit.json entry has
    ``details.bound == "exposure"`` (the Secret Sharer exposures of secret canaries) also gets
    the exposure bound P[exposure >= k] <= e^ε 2^(-k) + δ, counted as one more test in K.
    ``observed_mechanism`` (default true): when the ledger records the mechanism as run
    (``observed``, written by dp-audit's trainers), its ε from the PRV accountant's lower end
    (dp_audit.accounting.observed_epsilon_lower; a computation, no α spent) is one more estimate,
    ``method = "observed-mechanism"`` (step-level).
    ``fdp_null``: the null of the ``fdp`` estimator: ``"eps-delta"`` (default; valid for every
    (ε, δ)-DP mechanism) or ``"gdp"`` (refutes a μ-GDP reading of the claim: only for
    Gaussian-shaped mechanisms; it can refute a correct pure-ε claim, docs/estimators.md).
    ``on_unaccounted``: ``"warn"`` (default) or ``"fail"``: with ``"fail"``, a run whose claim,
    ledger or manifest lists unaccounted parts of training fails the gate (exit 1: the claim
    "ε covers all of training" is refuted by the run's own record). The verdict line names the
    unaccounted parts either way.
    """

    attacks: tuple[str, ...] | str = "all"
    estimators: tuple[str, ...] = ("fdp",)
    alpha: float = 0.05
    tolerance: float = 0.0
    threshold: str = "bonferroni"
    seed: int = 0
    exposure_bound: bool = True
    fdp_null: str = "eps-delta"
    observed_mechanism: bool = True
    claim_model: str = ""
    on_unaccounted: str = "warn"

    def __post_init__(self) -> None:
        attacks = self.attacks
        if isinstance(attacks, str):
            attacks = ("all",) if attacks == "all" else (attacks,)
        if not isinstance(attacks, (list, tuple)) or not all(isinstance(a, str) for a in attacks) or not attacks:
            raise UsageError(f"attacks must be \"all\" or a non-empty list of attack names, got {self.attacks!r}")
        object.__setattr__(self, "attacks", tuple(attacks))
        if isinstance(self.estimators, str) or not self.estimators:
            raise UsageError(f"estimators must be a non-empty list, got {self.estimators!r}")
        object.__setattr__(self, "estimators", tuple(self.estimators))
        for name in self.estimators:
            ESTIMATORS.get(name)  # UsageError naming the known ones
        if not any(ESTIMATORS.get(n).is_bound for n in self.estimators):
            raise UsageError("estimators: list at least one bound (raw is an estimate, not a bound)")
        if not 0 < self.alpha < 0.5:
            raise UsageError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise UsageError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        if self.fdp_null not in ("eps-delta", "gdp"):
            raise UsageError(f"fdp_null must be 'eps-delta' or 'gdp', got {self.fdp_null!r}")
        if self.threshold not in STRATEGIES or self.threshold == "fixed":
            raise UsageError(f"threshold must be 'bonferroni' or 'heldout' in a gate policy, got {self.threshold!r}")
        if self.on_unaccounted not in ON_UNACCOUNTED:
            raise UsageError(f"on_unaccounted must be 'warn' or 'fail', got {self.on_unaccounted!r}")
        model = self.claim_model or ("mu-gdp" if self.fdp_null == "gdp" else "eps-delta")
        if model not in CLAIM_MODELS:
            raise UsageError(f"claim_model must be 'eps-delta' or 'mu-gdp', got {self.claim_model!r}")
        if model == "eps-delta" and self.fdp_null == "gdp":
            raise UsageError("fdp_null = 'gdp' tests μ-GDP: it needs claim_model = 'mu-gdp' "
                             "(or leave claim_model unset)")
        object.__setattr__(self, "claim_model", model)
        if not self.counted_estimators():
            raise UsageError("estimators: 'gdp' tests μ-GDP, not (ε, δ)-DP, and the policy reads the claim as "
                             "(ε, δ): list 'clopper-pearson' (or 'fdp' for one-run scores), or set "
                             "claim_model = 'mu-gdp' if the claim is μ-GDP")

    def counts(self, method: str) -> bool:
        """Whether estimates of ``method`` are counted in the verdict under this policy."""
        if not ESTIMATORS.get(method).is_bound:
            return False
        return method != "gdp" or self.claim_model == "mu-gdp"

    def counted_estimators(self) -> tuple[str, ...]:
        return tuple(e for e in self.estimators if self.counts(e))

    def to_dict(self) -> dict[str, Any]:
        return {"attacks": list(self.attacks), "estimators": list(self.estimators), "alpha": self.alpha,
                "tolerance": self.tolerance, "threshold": self.threshold, "seed": self.seed,
                "exposure_bound": self.exposure_bound, "fdp_null": self.fdp_null,
                "observed_mechanism": self.observed_mechanism, "claim_model": self.claim_model,
                "on_unaccounted": self.on_unaccounted}


def load_policy(path: str | Path | None) -> GatePolicy:
    """Read gate.toml (unknown keys and wrong types are usage errors); None: the defaults."""
    return GatePolicy() if path is None else load_toml(path, GatePolicy)


def policy_from_mapping(data: dict[str, Any]) -> GatePolicy:
    return from_mapping(GatePolicy, data)


@dataclass(frozen=True)
class GateResult:
    """The verdict, every estimate (counted or not), the policy, and what the claim leaves out:
    ``unaccounted`` lists the parts of training no accountant covered (component names, with
    their reasons in ``unaccounted_reasons``); ``warnings`` are one-line notes for the user."""

    verdict: Verdict
    estimates: list[EpsilonEstimate] = field(default_factory=list)
    policy: GatePolicy = field(default_factory=GatePolicy)
    run_id: str | None = None
    claimed_delta: float | None = None
    unaccounted: tuple[str, ...] = ()
    unaccounted_reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def failed_on_unaccounted(self) -> bool:
        return bool(self.unaccounted) and self.policy.on_unaccounted == "fail"


@dataclass(frozen=True)
class ScoreSet:
    """One attack's scores as the gate sees them (higher = more likely member)."""

    attack: str
    scores: np.ndarray
    member: np.ndarray
    threat_model: str = "black-box"
    design: str = "one-run"  # "multi-run": one score per independent run or trial
    exposure: bool = False  # Secret Sharer exposures: also gets the exposure bound
    # extraction scores (> 0 = extracted) with P_out[extracted] <= extraction_p_out: gets the extraction bound
    extraction_p_out: float | None = None
    # canaries inserted group_size times (canaries.repeat): bounds are per example through k-fold
    # group privacy (dp_audit.group_privacy), never the group's ε compared with a per-example claim
    group_size: int = 1


def _claim_epsilon(value: Any, where: str) -> float:
    if isinstance(value, str) and value in ("inf", "Infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise IntegrityError(f"{where}: claim epsilon must be a number or \"inf\", got {value!r}")
    return float(value)


def _load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = load_manifest(run_dir)  # verifies the digest and every artifact hash (exit 3)
    if not (run_dir / AUDIT).is_file():
        raise UsageError(f"{run_dir / AUDIT} not found: run `dp-audit run --run {run_dir}` first")
    if AUDIT not in manifest["artifacts"]:
        raise IntegrityError(f"{run_dir / AUDIT} is not recorded in the manifest: its integrity cannot be checked")
    audit = read_json(run_dir / AUDIT, what="audit.json", integrity=True)
    if not isinstance(audit, dict) or not isinstance(audit.get("attacks"), list) or "claim" not in audit:
        raise IntegrityError(f"{run_dir / AUDIT}: needs 'attacks' and 'claim' (docs/formats.md)")
    return manifest, audit


def _scores_path(run_dir: Path, rel: Any, manifest: dict[str, Any], attack: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise IntegrityError(f"audit.json: attack {attack!r} has no scores_file")
    path = (run_dir / rel).resolve()
    if run_dir.resolve() not in path.parents:
        raise IntegrityError(f"audit.json: scores_file {rel!r} of attack {attack!r} is outside the run directory")
    if Path(rel).as_posix() not in manifest["artifacts"]:
        raise IntegrityError(f"{rel} is not recorded in the manifest: its integrity cannot be checked")
    return path


def evaluate_gate(run_dir: str | Path, policy: GatePolicy | None = None) -> GateResult:
    """Read and check the run directory, then :func:`gate_scores`. No files are written."""
    policy = policy or GatePolicy()
    run_dir = Path(run_dir)
    if load_manifest(run_dir, verify=False).get("kind") == "step-audit":  # `dp-audit step-audit --out`
        from dp_audit.stepaudit.gating import evaluate_step_audit

        return evaluate_step_audit(run_dir, policy)
    manifest, audit = _load_run(run_dir)
    claim = audit["claim"] if isinstance(audit["claim"], dict) else {}
    eps_claim = _claim_epsilon(claim.get("epsilon"), str(run_dir / AUDIT))
    man_claim = _claim_epsilon(manifest["claim"].get("epsilon"), str(run_dir / "manifest.json"))
    if not (eps_claim == man_claim or math.isclose(eps_claim, man_claim, rel_tol=1e-9)):
        raise IntegrityError(f"claimed ε differs between audit.json ({eps_claim}) and manifest.json ({man_claim})")
    try:
        delta = float(claim.get("delta", manifest["claim"].get("delta")))
    except (TypeError, ValueError):
        raise IntegrityError(f"{run_dir / AUDIT}: claim delta is not a number") from None
    if not 0 < delta < 1:
        raise IntegrityError(f"{run_dir / AUDIT}: claim delta must be in (0, 1), got {delta}")
    threat_model = audit.get("threat_model", "black-box")

    repeat = canary_repeat(manifest)
    by_name = {a.get("name"): a for a in audit["attacks"] if isinstance(a, dict)}
    if policy.attacks == ("all",):
        names = list(by_name)
    else:
        unknown = [a for a in policy.attacks if a not in by_name]
        if unknown:
            raise UsageError(f"policy attacks {unknown} not in this run's audit.json; it has: {', '.join(by_name) or '(none)'}")
        names = list(policy.attacks)
    if not names:
        raise UsageError(f"{run_dir / AUDIT} lists no attacks: nothing to gate")
    sets = []
    for name in names:
        entry = by_name[name]
        scores, member = load_scores(_scores_path(run_dir, entry.get("scores_file"), manifest, name), integrity=True)
        attack_tm = entry.get("threat_model") or threat_model  # each attack's own adversary (docs/formats.md)
        design = (entry.get("details") or {}).get("design") or ("multi-run" if attack_tm == "step-level" else "one-run")
        sets.append(ScoreSet(attack=name, scores=scores, member=member, threat_model=attack_tm, design=design,
                             exposure=policy.exposure_bound and has_exposure_bound(entry),
                             extraction_p_out=extraction_p_out(entry, name) if policy.exposure_bound else None,
                             group_size=repeat if design == "one-run" and name not in GROUP_FREE_ATTACKS else 1))
    ledger = _hashed_ledger(run_dir, manifest)
    observed = _observed_estimate(run_dir, ledger, delta) if policy.observed_mechanism else None
    from dp_audit.accounting import replayable_noise_parts

    # replayable noise (privacy.reproducible_noise) is named like any unaccounted part
    parts = unaccounted_parts(claim.get("unaccounted"), manifest["claim"].get("unaccounted"),
                              (ledger or {}).get("unaccounted"), replayable_noise_parts(ledger))
    result = gate_scores(sets, claimed_epsilon=eps_claim, delta=delta, policy=policy, threat_model=threat_model,
                         observed=observed, unaccounted=parts)
    return dataclasses.replace(result, run_id=manifest.get("run_id"))


def _skipped(st: ScoreSet, delta: float) -> bool:
    """Canaries inserted k times with k·δ >= 1: the group claim says nothing even at ε = 0."""
    k_st = st.group_size
    return isinstance(k_st, int) and not isinstance(k_st, bool) and k_st >= 1 and group_delta(0.0, delta, k_st) >= 1.0


def gate_scores(sets: list[ScoreSet], *, claimed_epsilon: float, delta: float, policy: GatePolicy | None = None,
                threat_model: str = "black-box", observed: EpsilonEstimate | None = None,
                unaccounted: list[tuple[str, str]] | tuple = ()) -> GateResult:
    """The gate's decision on score arrays: every (attack, estimator) bound at α/K, K = the number
    of counted tests; fail iff the largest counted bound exceeds claim + tolerance, or (policy
    ``on_unaccounted = "fail"``) the claim leaves parts of training unaccounted. ``observed`` is
    the ledger's bound of the mechanism as run (counted, no α); ``unaccounted`` lists
    (component, reason) pairs."""
    policy = policy or GatePolicy()
    if not sets:
        raise UsageError("no attacks to gate")
    counted_methods = policy.counted_estimators()
    # score sets whose canaries are repeated past k·δ >= 1 are skipped below: they are not tests
    tested = [s for s in sets if not _skipped(s, delta)]
    k = n_tests(len(tested), len(counted_methods), sum(s.exposure + (s.extraction_p_out is not None) for s in tested))
    level = policy.alpha / k
    warnings: list[str] = []
    for method in policy.estimators:
        if ESTIMATORS.get(method).is_bound and not policy.counts(method):
            warnings.append(f"estimator {method!r} tests μ-GDP ({MU_GDP_ONLY}): reported, not counted; "
                            "set claim_model = \"mu-gdp\" in the policy if the claim is μ-GDP")

    estimates: list[EpsilonEstimate] = []
    i = 0
    for st in sets:
        k_st = st.group_size
        if isinstance(k_st, bool) or not isinstance(k_st, int) or k_st < 1:
            raise UsageError(f"attack {st.attack!r}: canary repeat must be an integer >= 1, got {k_st!r}")
        if _skipped(st, delta):  # even the group claim at ε = 0 says nothing
            warnings.append(f"attack {st.attack!r}: canaries inserted {k_st} times; k·δ = {k_st * delta:.3g} >= 1, "
                            "so their scores cannot refute the claim: not gated")
            i += len(policy.estimators)
            continue
        for method in policy.estimators:
            est_cls = ESTIMATORS.get(method)
            if est_cls.design == "multi-run" and st.design != "multi-run":
                raise UsageError(f"estimator {method!r} needs one score per independent run; the scores of attack "
                                 f"{st.attack!r} are one-run canary scores (use steinke or fdp)")
            seed = [policy.seed, i]
            i += 1

            def at(d: float, st=st, method=method, est_cls=est_cls, seed=seed) -> EpsilonEstimate:
                return estimate_epsilon(st.scores, st.member, method=method,
                                        alpha=level if est_cls.is_bound else policy.alpha, delta=d,
                                        threshold=policy.threshold, threat_model=st.threat_model,
                                        rng=np.random.default_rng(seed), attack=st.attack, fdp_null=policy.fdp_null)

            est = per_example_bound(at, k=k_st, delta=delta)
            if est.is_bound and not policy.counts(method):
                est = dataclasses.replace(est, is_bound=False, details={
                    **est.details, "counted": False,
                    "note": f"{MU_GDP_ONLY}: not counted (the policy reads the claim as (ε, δ)-DP)"})
            estimates.append(est)
        if st.exposure:
            from dp_audit.attacks.exposure import exposure_epsilon_bound

            estimates.append(per_example_bound(
                lambda d, st=st: exposure_epsilon_bound(st.scores, member=st.member, delta=d, alpha=level,
                                                        attack=st.attack, threat_model=st.threat_model),
                k=k_st, delta=delta))
        if st.extraction_p_out is not None:
            from dp_audit.attacks.extraction import extraction_epsilon_bound

            estimates.append(per_example_bound(
                lambda d, st=st: extraction_epsilon_bound(st.scores > 0, member=st.member, p_out=st.extraction_p_out,
                                                          delta=d, alpha=level, attack=st.attack,
                                                          threat_model=st.threat_model),
                k=k_st, delta=delta))
    if observed is not None:
        estimates.append(observed)

    counted = [e for e in estimates if e.is_bound]
    if not counted:
        raise UsageError("nothing to gate: " + "; ".join(warnings[-1:]) if warnings else "nothing to gate")
    best = max(counted, key=lambda e: e.epsilon_lb)
    refuted = math.isfinite(claimed_epsilon) and best.epsilon_lb > claimed_epsilon + policy.tolerance
    first: dict[str, str] = {}  # component -> its first non-empty reason (sources repeat entries)
    for comp, reason in unaccounted:
        if not first.get(comp):
            first[comp] = reason
    names = tuple(first)
    reasons = tuple(f"{c} ({r})" if r else c for c, r in first.items())
    fail = refuted or (bool(names) and policy.on_unaccounted == "fail")
    verdict = Verdict(status="fail" if fail else "pass", claimed_epsilon=claimed_epsilon,
                      epsilon_lb_max=best.epsilon_lb, alpha=policy.alpha, alpha_per_test=level, n_tests=k,
                      tolerance=policy.tolerance, best_attack=best.attack, best_method=best.method,
                      threat_model=best.threat_model if best.epsilon_lb > 0 else threat_model)
    if names and policy.on_unaccounted == "warn":
        warnings.append(f"the claim does not cover all of training: not accounted: {', '.join(names)} "
                        "(on_unaccounted = \"fail\" makes this a failure)")
    return GateResult(verdict=verdict, estimates=estimates, policy=policy, claimed_delta=delta, unaccounted=names,
                      unaccounted_reasons=reasons, warnings=tuple(warnings))


def unaccounted_parts(*sources: Any) -> list[tuple[str, str]]:
    """(component, reason) of every unaccounted entry of the claim / manifest / ledger lists
    (each a list of ``{"component", "reason"}`` objects or plain strings); order kept."""
    out: list[tuple[str, str]] = []
    for src in sources:
        if not src:
            continue
        if not isinstance(src, list):
            raise IntegrityError(f"'unaccounted' must be a list, got {type(src).__name__}")
        for u in src:
            if isinstance(u, dict):
                out.append((str(u.get("component", "?")), str(u.get("reason", "") or "")))
            else:
                out.append((str(u), ""))
    return out


def _hashed_ledger(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    if "ledger.json" not in manifest["artifacts"] or not (run_dir / "ledger.json").is_file():
        return None
    ledger = read_json(run_dir / "ledger.json", what="ledger", integrity=True)
    if not isinstance(ledger, dict):
        raise IntegrityError(f"{run_dir / 'ledger.json'}: must be an object (docs/formats.md)")
    return ledger


def _observed_estimate(run_dir: Path, ledger: dict[str, Any] | None, delta: float) -> EpsilonEstimate | None:
    """ε (lower bound) of the DP mechanism as run, from ledger.json's ``observed`` records; None
    when the run has no hashed ledger with such records (external checkpoints, runs of older versions)."""
    if ledger is None:
        return None
    from dp_audit.accounting import epsilon_lower_of_observed, observed_events

    try:
        obs = observed_events(ledger)
        if obs is None:
            return None
        eps = epsilon_lower_of_observed(obs, delta=delta)
    except UsageError as exc:
        raise IntegrityError(f"{run_dir / 'ledger.json'}: {exc}") from None
    return EpsilonEstimate(
        method="observed-mechanism", epsilon_lb=float(eps), alpha=0.0, delta=delta, m=0, threshold="exact",
        threat_model="step-level", is_bound=True, attack="ledger",
        details={"source": "ledger.json 'observed': the optimizer's noise multiplier and clip norm and the data "
                           "loader's Poisson rate after training", "accountant": "PRV accountant (Gopi et al. 2021, "
                           "Opacus) lower end: estimate at δ + δ/1000 minus its ε error; a lower bound on the ε of "
                           "the mechanism as run",
                 "observed": obs})


# attacks whose canaries are not the input canaries (Dirac gradient canaries are inserted once)
GROUP_FREE_ATTACKS = ("whitebox-dirac",)
UNREPEATED = GROUP_FREE_ATTACKS  # gradient canaries: each is one example, whatever canaries.repeat says


def canary_repeat(manifest: dict[str, Any]) -> int:
    """How many times a dp-audit run inserted each member canary (``canaries.repeat``; 1 otherwise)."""
    cfg = manifest.get("config") if manifest.get("kind") != "external" else None
    canaries = cfg.get("canaries") if isinstance(cfg, dict) else None
    repeat = canaries.get("repeat", 1) if isinstance(canaries, dict) else 1
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise IntegrityError(f"manifest.json: canaries.repeat must be an integer >= 1, got {repeat!r}")
    return repeat


def has_exposure_bound(entry: dict[str, Any]) -> bool:
    """Whether an audit.json attack entry holds Secret Sharer exposures (``details.bound``)."""
    return isinstance(entry.get("details"), dict) and entry["details"].get("bound") == "exposure"


def extraction_p_out(entry: dict[str, Any], name: str) -> float | None:
    """The null extraction probability of an audit.json ``extraction`` entry that carries the
    extraction bound (``details.bound == "extraction"``, ``details.p_out``), else None."""
    d = entry.get("details")
    if not isinstance(d, dict) or d.get("bound") != "extraction":
        return None
    p = d.get("p_out")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < float(p) < 1.0:
        raise IntegrityError(f"audit.json: attack {name!r} has an extraction bound without a p_out in (0, 1)")
    return float(p)


def n_tests(n_attacks: int, n_bounds: int, n_exposure: int = 0) -> int:
    """K, the number of tests the gate takes its maximum over: every (attack, bound estimator)
    pair plus one exposure bound per exposure attack (and one extraction bound per extraction
    attack that carries one). α is divided by K."""
    return max(1, n_attacks * n_bounds + n_exposure)


# ---------------------------------------------------------------------------------------------
# outputs


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.3f}"


def not_counted_reason(e: EpsilonEstimate) -> str:
    """Why an estimate is not counted: a μ-GDP test under an (ε, δ) reading, or a point estimate."""
    return MU_GDP_ONLY if e.details.get("counted") is False else "estimate, not a bound"


def verdict_line(result: GateResult) -> str:
    v = result.verdict
    refuted = math.isfinite(v.claimed_epsilon) and v.epsilon_lb_max > v.claimed_epsilon + v.tolerance
    if v.status == "fail":
        word = "FAIL: claim refuted" if refuted else "FAIL: claim does not cover all of training"
    else:
        word = "PASS: claim not refuted"
    where = f" ({v.best_method} on {v.best_attack})" if v.best_method else ""
    line = (f"{word}: largest ε_LB {_fmt(v.epsilon_lb_max)}{where} vs claimed ε {_fmt(v.claimed_epsilon)}"
            f"{f' + tolerance {v.tolerance:g}' if v.tolerance else ''} "
            f"at {100 * (1 - v.alpha):g}% confidence ({v.n_tests} test(s) at α={v.alpha_per_test:.3g} each, "
            f"{v.threat_model})")
    if result.unaccounted:
        line += f"; not accounted: {', '.join(result.unaccounted)} (on_unaccounted = {result.policy.on_unaccounted})"
    return line


def summary_markdown(result: GateResult) -> str:
    v = result.verdict
    icon = "❌" if v.status == "fail" else "✅"
    # run ids, attack names and reasons come from files a user controls: escaped (CI appends this
    # file to the job summary; docs/reliability.md)
    lines = [f"## {icon} dp-audit gate: {v.status.upper()}", "", md_text(verdict_line(result)), "",
             f"Run {md_code(result.run_id)}, δ = {result.claimed_delta:g}. A lower bound can refute a claim, "
             "never prove it.", ""]
    if result.unaccounted:
        lines += [f"**Not covered by the claim** (on_unaccounted = {result.policy.on_unaccounted}): "
                  + md_text("; ".join(result.unaccounted_reasons)), ""]
    lines += ["| attack | method | ε_LB | α | counted | claimed ε |", "|---|---|---|---|---|---|"]
    for e in result.estimates:
        counted = "yes" if e.is_bound else f"no ({not_counted_reason(e)})"
        lines.append(f"| {md_text(e.attack)} | {md_text(e.method)} | {_fmt(e.epsilon_lb)} | {e.alpha:.3g} | "
                     f"{md_text(counted)} | {_fmt(v.claimed_epsilon)} |")
    return "\n".join(lines) + "\n"


def junit_xml(result: GateResult) -> str:
    from dp_audit.junit import TestCase, render

    v = result.verdict
    limit = v.claimed_epsilon + v.tolerance
    cases = []
    for e in result.estimates:
        name = f"{e.method} on {e.attack}: ε_LB {_fmt(e.epsilon_lb)} <= claimed ε {_fmt(v.claimed_epsilon)}"
        if not e.is_bound:
            cases.append(TestCase(classname=f"dp-audit.gate.{e.attack}", name=name, skipped=not_counted_reason(e)))
        elif e.epsilon_lb > limit:
            cases.append(TestCase(classname=f"dp-audit.gate.{e.attack}", name=name,
                                  failure=f"ε_LB {e.epsilon_lb:.4f} > {limit:.4f} at α={e.alpha:.3g}"))
        else:
            cases.append(TestCase(classname=f"dp-audit.gate.{e.attack}", name=name))
    if result.unaccounted:
        msg = "not accounted: " + "; ".join(result.unaccounted_reasons)
        cases.append(TestCase(classname="dp-audit.gate", name="the claim covers all of training",
                              failure=msg if result.failed_on_unaccounted else None,
                              skipped=None if result.failed_on_unaccounted else f"on_unaccounted = warn: {msg}"))
    cases.append(TestCase(classname="dp-audit.gate", name="verdict",
                          failure=verdict_line(result) if v.status == "fail" else None))
    return render("dp-audit gate", cases)


def write_outputs(result: GateResult, *, summary: str | Path, junit: str | Path) -> None:
    atomic_write_text(summary, summary_markdown(result))
    atomic_write_text(junit, junit_xml(result))


__all__ = ["GatePolicy", "GateResult", "ScoreSet", "evaluate_gate", "gate_scores", "load_policy", "write_outputs",
           "summary_markdown", "junit_xml", "verdict_line", "n_tests", "has_exposure_bound", "extraction_p_out", "unaccounted_parts", "canary_repeat",
           "MU_GDP_ONLY"]
