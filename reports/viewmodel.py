"""The report's view model: one frozen object built from a run directory's result files
(``audit.json``, ``manifest.json``, ``ledger.json``, ``scores/*.npz``) holding everything the
renderers show (DESIGN.md §9, docs/formats.md).

Nothing here recomputes a statistic: numbers are read from audit.json as written by
``dp-audit run`` and ``dp-audit gate``; the only derived quantities are presentational (the
largest valid ε_LB when a run has not been gated yet, which estimates exceed the claim).
Optional sections that are absent show as "not run"; a malformed audit.json raises
:class:`IntegrityError` with one line naming the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dp_audit.accounting import NOISE_REPLAYABLE, replayable_noise_parts as _replayable_noise  # noqa: F401
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import dumps_json, load_scores, read_json, sha256_file

AUDIT = "audit.json"
MANIFEST = "manifest.json"
LEDGER = "ledger.json"
NOT_RUN = "not run"
NOT_GATED = "not gated"
ESTIMATE_LABEL = "estimate, not a bound"
STANDARD_FPRS = (0.001, 0.01)


# ---------------------------------------------------------------------------------------------
# formatting helpers shared by every renderer


def fmt_eps(x: float | None, digits: int = 3) -> str:
    """ε for display: ∞ for an infinite claim, "n/a" for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


def fmt_num(x: float | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return format(x, spec)


def fmt_pct(fpr: float) -> str:
    """0.001 -> "0.1%"."""
    return f"{100 * fpr:g}%"


# ---------------------------------------------------------------------------------------------
# records of the view


@dataclass(frozen=True)
class VerdictView:
    status: str  # "pass" | "fail" | "not gated"
    line: str
    claimed_epsilon: float
    epsilon_lb_max: float | None
    alpha: float | None
    delta: float
    threat_model: str
    best_attack: str | None = None
    best_method: str | None = None
    n_tests: int | None = None
    alpha_per_test: float | None = None
    tolerance: float = 0.0

    @property
    def label(self) -> str:
        return self.status.upper()

    @property
    def detail(self) -> str:
        """The line without its leading "FAIL: " / "PASS: " / "NOT GATED: " (shown next to a badge)."""
        return self.line.split(": ", 1)[1] if ": " in self.line else self.line


@dataclass(frozen=True)
class UnaccountedPart:
    component: str
    reason: str
    source: str  # "claim" | "ledger" | "manifest"


@dataclass(frozen=True)
class AttackView:
    name: str
    auc: float
    auc_ci: tuple[float, float] | None
    n_members: int
    n_nonmembers: int
    threat_model: str
    scores_file: str | None
    tpr_at_fpr: tuple[tuple[float, float], ...]  # sorted (fpr, tpr)
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    member_scores: tuple[float, ...] | None = None  # None: scores file not available
    nonmember_scores: tuple[float, ...] | None = None

    def tpr_at(self, fpr: float) -> float | None:
        for f, t in self.tpr_at_fpr:
            if math.isclose(f, fpr, rel_tol=1e-9):
                return t
        return None


@dataclass(frozen=True)
class EstimateView:
    method: str
    attack: str | None
    epsilon_lb: float
    alpha: float
    delta: float
    m: int
    threshold: str
    threat_model: str
    is_bound: bool
    r: int | None
    v: int | None
    ceiling: float | None
    exceeds_claim: bool
    null: str | None = None  # fdp's null hypothesis: eps-delta | gdp
    validity: str | None = None  # e.g. "valid only under a μ-GDP claim" (details.validity)

    @property
    def label(self) -> str:
        if self.is_bound:
            return "lower bound" if not self.validity else f"lower bound ({self.validity})"
        return self.validity or ESTIMATE_LABEL

    @property
    def display(self) -> str:
        """The method as a reader should see it: fdp names its null (docs/estimators.md)."""
        if self.method == "fdp" and self.null:
            return "fdp (μ-GDP null)" if self.null == "gdp" else "fdp ((ε, δ) null)"
        return self.method

    @property
    def versus_claim(self) -> str:
        if not self.is_bound:
            return "not counted"
        return "exceeds: refutes" if self.exceeds_claim else "below"


@dataclass(frozen=True)
class AccountingView:
    claimed: float
    delta: float
    methods: tuple[tuple[str, float | None], ...]
    consistent: bool
    flags: tuple[str, ...]


@dataclass(frozen=True)
class CurveView:
    probe: str  # direction kind: gaussian | filter
    split: str
    eta: tuple[float, ...]
    loss_mean: tuple[float, ...]
    loss_se: tuple[float, ...] | None
    acc_mean: tuple[float, ...] | None
    name: str | None = None  # the probe's label in the audit config (e.g. "curve-gaussian")
    n_directions: int | None = None

    @property
    def label(self) -> str:
        return f"{self.split} ({self.probe})"

    @property
    def panel(self) -> str:
        """Curves of one panel share an η axis: same probe label (or direction kind)."""
        return self.name or self.probe


@dataclass(frozen=True)
class LandscapeView:
    curves: tuple[CurveView, ...]
    summary: tuple[tuple[str, str], ...]  # flattened sharpness / curvature numbers for a table


@dataclass(frozen=True)
class ManifestView:
    run_id: str
    created: str
    kind: str
    tool_version: str
    data_fingerprint: str | None
    seeds: tuple[tuple[str, str], ...]
    artifacts: tuple[tuple[str, str], ...]
    environment: tuple[tuple[str, str], ...]
    digest: str


@dataclass(frozen=True)
class SecretRow:
    id: str
    member: bool
    exposure: float | None  # sampled-rank exposure (bits)
    exposure_extrapolated: float | None  # skew-normal extrapolation to |R| (bits; an estimate)
    greedy_hit: bool | None
    sampled_hits: int | None


@dataclass(frozen=True)
class SecretsView:
    """Secret canaries of a causal LM (audit.json ``secrets``): exposure and extraction."""

    prefix: str | None
    space_size: int | None
    space_size_source: str | None
    n_candidates: int | None
    max_sampled: float | None
    max_extrapolated: float | None
    expected_unseen: float | None
    # (statistic, members, non-members)
    means: tuple[tuple[str, float | None, float | None], ...]
    samples: int | None
    extraction_totals: tuple[tuple[str, int, int], ...]  # (count, members, non-members)
    extraction_note: str | None
    rows: tuple[SecretRow, ...]
    bounds: tuple["EstimateView", ...]  # exposure / extraction estimates, against the claim

    def top_rows(self, n: int) -> tuple[SecretRow, ...]:
        """The n canaries with the largest sampled (then extrapolated) exposure, members first on ties."""
        def key(r: SecretRow):
            return (-(r.exposure or 0.0), -(r.exposure_extrapolated or 0.0), -int(r.sampled_hits or 0), not r.member)
        return tuple(sorted(self.rows, key=key)[:n])


@dataclass(frozen=True)
class ReportView:
    """Everything a renderer needs, in display order (DESIGN.md §9)."""

    run_dir: str
    run_id: str
    created: str
    source: str
    model: tuple[tuple[str, str], ...]  # name, trainer, mode, tuning, kind, path
    model_name: str
    trainer_mode: str
    claimed_epsilon: float
    delta: float
    accountant: str
    threat_model: str
    canaries: tuple[tuple[str, str], ...]
    verdict: VerdictView
    unaccounted: tuple[UnaccountedPart, ...]
    attacks: tuple[AttackView, ...]
    estimates: tuple[EstimateView, ...]
    ceiling: tuple[tuple[str, float], ...]
    accounting: AccountingView | None
    landscapes: LandscapeView | None
    manifest: ManifestView | None
    reproduce: str | None
    secrets: SecretsView | None = None
    audit_json: str = field(repr=False, default="{}")  # the validated audit.json, for the JSON copy

    @property
    def title(self) -> str:
        return f"dp-audit report: {self.model_name} ({self.run_id})"

    @property
    def best_attack(self) -> AttackView | None:
        return max(self.attacks, key=lambda a: a.auc) if self.attacks else None

    @property
    def has_histograms(self) -> bool:
        return any(a.member_scores is not None for a in self.attacks)

    def audit(self) -> dict[str, Any]:
        return json.loads(self.audit_json)


# ---------------------------------------------------------------------------------------------
# validation helpers: one clear line naming the key


def _num(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, str) and value in ("inf", "-inf", "nan", "Infinity", "-Infinity", "NaN"):
        return float(value.replace("inity", "").lower())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IntegrityError(f"audit.json: {where} must be a number, got {value!r}")
    return float(value)


def _int(value: Any, where: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise IntegrityError(f"audit.json: {where} must be an integer, got {value!r}")
    return value


def _str(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise IntegrityError(f"audit.json: {where} must be a string, got {value!r}")
    return value


def _obj(value: Any, where: str, *, optional: bool = True) -> dict[str, Any] | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise IntegrityError(f"audit.json: {where} must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str, *, optional: bool = True) -> list[Any]:
    if value is None and optional:
        return []
    if not isinstance(value, list):
        raise IntegrityError(f"audit.json: {where} must be a list, got {type(value).__name__}")
    return value


def _floats(value: Any, where: str, *, optional: bool = False) -> tuple[float, ...] | None:
    if value is None and optional:
        return None
    return tuple(_num(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where, optional=False)))


# ---------------------------------------------------------------------------------------------
# sections


def _verdict(audit: dict[str, Any], estimates: tuple[EstimateView, ...], claimed: float, delta: float,
             threat_model: str) -> VerdictView:
    raw = _obj(audit.get("verdict"), "verdict")
    if raw is not None:
        status = _str(raw.get("status"), "verdict.status")
        if status not in ("pass", "fail"):
            raise IntegrityError(f"audit.json: verdict.status must be 'pass' or 'fail', got {status!r}")
        v = VerdictView(
            status=status, line="", claimed_epsilon=_num(raw.get("claimed_epsilon", claimed), "verdict.claimed_epsilon"),
            epsilon_lb_max=_num(raw.get("epsilon_lb_max"), "verdict.epsilon_lb_max"),
            alpha=_num(raw.get("alpha"), "verdict.alpha"), delta=delta,
            threat_model=_str(raw.get("threat_model", threat_model), "verdict.threat_model"),
            best_attack=_str(raw.get("best_attack"), "verdict.best_attack", optional=True),
            best_method=_str(raw.get("best_method"), "verdict.best_method", optional=True),
            n_tests=_int(raw.get("n_tests"), "verdict.n_tests", optional=True),
            alpha_per_test=_num(raw.get("alpha_per_test"), "verdict.alpha_per_test", optional=True),
            tolerance=_num(raw.get("tolerance", 0.0), "verdict.tolerance"),
        )
    else:
        bounds = [e for e in estimates if e.is_bound]
        best = max(bounds, key=lambda e: e.epsilon_lb) if bounds else None
        v = VerdictView(status=NOT_GATED, line="", claimed_epsilon=claimed,
                        epsilon_lb_max=best.epsilon_lb if best else None, alpha=best.alpha if best else None,
                        delta=delta, threat_model=threat_model, best_attack=best.attack if best else None,
                        best_method=best.method if best else None)
    return _with_line(v)


def _with_line(v: VerdictView) -> VerdictView:
    from dataclasses import replace

    where = f" ({v.best_method} on {v.best_attack})" if v.best_method else ""
    lb = f"highest valid ε_LB {fmt_eps(v.epsilon_lb_max)}{where}"
    claim = f"claimed ε {fmt_eps(v.claimed_epsilon)}" + (f" + tolerance {v.tolerance:g}" if v.tolerance else "")
    conf = ""
    if v.alpha is not None:
        conf = f", α = {v.alpha:g} ({100 * (1 - v.alpha):g}% confidence"
        if v.n_tests:
            conf += f"; {v.n_tests} test(s) at α = {v.alpha_per_test:.3g} each"
        conf += ")"
    tail = f"{conf}, δ = {v.delta:g}, threat model {v.threat_model}"
    if v.status == "fail":
        line = f"FAIL: claim refuted — {lb} > {claim}{tail}"
    elif v.status == "pass":
        line = f"PASS: claim not refuted — {lb} ≤ {claim}{tail}"
    elif v.epsilon_lb_max is None:
        line = f"NOT GATED: no valid ε_LB yet (no estimates); {claim}, δ = {v.delta:g}, threat model {v.threat_model}"
    else:
        line = f"NOT GATED: {lb} vs {claim}{tail}. Run `dp-audit gate` for a verdict"
    return replace(v, line=line)


def _unaccounted(*sources: tuple[str, Any]) -> tuple[UnaccountedPart, ...]:
    seen: dict[str, UnaccountedPart] = {}
    for source, items in sources:
        if not isinstance(items, list):
            continue
        for u in items:
            if isinstance(u, Mapping):
                comp, reason = str(u.get("component", "?")), str(u.get("reason", ""))
            else:
                comp, reason = str(u), ""
            if comp not in seen:  # the same component listed by the claim and the ledger shows once
                seen[comp] = UnaccountedPart(component=comp, reason=reason, source=source)
    return tuple(seen.values())


def _scores(run_dir: Path, rel: str | None, attack: str, check) -> tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]:
    if not rel:
        return None, None
    path = (run_dir / rel).resolve()
    if run_dir.resolve() not in path.parents:
        raise IntegrityError(f"audit.json: scores_file {rel!r} of attack {attack!r} is outside the run directory")
    check(Path(rel).as_posix())  # a listed file that is missing is an integrity error
    if not path.is_file():
        return None, None
    try:
        scores, member = load_scores(path, integrity=True)
    except UsageError as exc:  # a malformed result file is an integrity problem here
        raise IntegrityError(str(exc)) from None
    return tuple(scores[member].tolist()), tuple(scores[~member].tolist())


def _attacks(audit: dict[str, Any], run_dir: Path, check, threat_model: str) -> tuple[AttackView, ...]:
    out = []
    for i, a in enumerate(_list(audit.get("attacks"), "attacks", optional=False)):
        w = f"attacks[{i}]"
        a = _obj(a, w, optional=False)
        name = _str(a.get("name"), f"{w}.name")
        tpr = _obj(a.get("tpr_at_fpr"), f"{w}.tpr_at_fpr") or {}
        pairs = []
        for k, val in tpr.items():
            try:
                f = float(k)
            except ValueError:
                raise IntegrityError(f"audit.json: {w}.tpr_at_fpr key {k!r} is not an FPR") from None
            pairs.append((f, _num(val, f"{w}.tpr_at_fpr[{k}]")))
        ci = a.get("auc_ci")
        if ci is not None:
            ci = _floats(ci, f"{w}.auc_ci")
            if len(ci) != 2:
                raise IntegrityError(f"audit.json: {w}.auc_ci must have 2 numbers")
        fpr = _floats(a.get("roc_fpr", []), f"{w}.roc_fpr")
        tprs = _floats(a.get("roc_tpr", []), f"{w}.roc_tpr")
        if len(fpr) != len(tprs):
            raise IntegrityError(f"audit.json: {w}.roc_fpr and roc_tpr differ in length ({len(fpr)} vs {len(tprs)})")
        rel = _str(a.get("scores_file"), f"{w}.scores_file", optional=True)
        mem, non = _scores(run_dir, rel, name, check)
        out.append(AttackView(
            name=name, auc=_num(a.get("auc"), f"{w}.auc"), auc_ci=ci,
            n_members=_int(a.get("n_members", 0), f"{w}.n_members"),
            n_nonmembers=_int(a.get("n_nonmembers", 0), f"{w}.n_nonmembers"),
            threat_model=_str(a.get("threat_model", threat_model), f"{w}.threat_model"), scores_file=rel,
            tpr_at_fpr=tuple(sorted(pairs)), roc_fpr=fpr, roc_tpr=tprs, member_scores=mem, nonmember_scores=non))
    return tuple(out)


def _estimates(audit: dict[str, Any], claimed: float, ceiling: dict[str, float],
               threat_model: str) -> tuple[EstimateView, ...]:
    out = []
    for i, e in enumerate(_list(audit.get("estimates"), "estimates")):
        w = f"estimates[{i}]"
        e = _obj(e, w, optional=False)
        method = _str(e.get("method"), f"{w}.method")
        lb = _num(e.get("epsilon_lb"), f"{w}.epsilon_lb")
        is_bound = e.get("is_bound", True)
        if not isinstance(is_bound, bool):
            raise IntegrityError(f"audit.json: {w}.is_bound must be true or false, got {is_bound!r}")
        out.append(EstimateView(
            method=method, attack=_str(e.get("attack"), f"{w}.attack", optional=True), epsilon_lb=lb,
            alpha=_num(e.get("alpha"), f"{w}.alpha"), delta=_num(e.get("delta"), f"{w}.delta"),
            m=_int(e.get("m", 0), f"{w}.m"), threshold=str(e.get("threshold", "")),
            threat_model=_str(e.get("threat_model", threat_model), f"{w}.threat_model"), is_bound=is_bound,
            r=_int(e.get("r"), f"{w}.r", optional=True), v=_int(e.get("v"), f"{w}.v", optional=True),
            ceiling=ceiling.get(method) if is_bound else None,
            exceeds_claim=bool(is_bound and math.isfinite(claimed) and lb > claimed),
            null=_null(e), validity=_validity(e)))
    return tuple(out)


def _validity(e: dict[str, Any]) -> str | None:
    """The estimator's validity caveat (gate: ``details.validity``), e.g. a μ-GDP test reported
    under an (ε, δ) claim: it is a bound only under a μ-GDP claim, so it is shown as such and
    not counted, rather than as a point estimate."""
    details = e.get("details")
    value = details.get("validity") if isinstance(details, dict) else None
    return value if isinstance(value, str) and value else None


def _null(e: dict[str, Any]) -> str | None:
    details = e.get("details")
    null = details.get("null") if isinstance(details, dict) else None
    return null if isinstance(null, str) else None


def _accounting(audit: dict[str, Any]) -> AccountingView | None:
    acc = _obj(audit.get("accounting"), "accounting")
    if acc is None:
        return None
    methods = _obj(acc.get("methods"), "accounting.methods") or {}
    flags = _list(acc.get("flags"), "accounting.flags")
    consistent = acc.get("consistent", False)
    return AccountingView(
        claimed=_num(acc.get("claimed"), "accounting.claimed"), delta=_num(acc.get("delta"), "accounting.delta"),
        methods=tuple((str(k), _num(v, f"accounting.methods.{k}", optional=True)) for k, v in methods.items()),
        consistent=bool(consistent), flags=tuple(str(f) for f in flags))


def _flatten(prefix: str, obj: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k == "seed":  # reproducibility data, not a result (kept in audit.json)
                continue
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append((prefix, fmt_num(float(obj), ".4g")))
    elif obj is not None and not isinstance(obj, (list, tuple)):
        out.append((prefix, str(obj)))


def _landscapes(audit: dict[str, Any]) -> LandscapeView | None:
    land = _obj(audit.get("landscapes"), "landscapes")
    if land is None:
        return None
    curves = []
    for i, c in enumerate(_list(land.get("curves"), "landscapes.curves")):
        w = f"landscapes.curves[{i}]"
        c = _obj(c, w, optional=False)
        eta = _floats(c.get("eta"), f"{w}.eta")
        loss = _floats(c.get("loss_mean"), f"{w}.loss_mean")
        se = _floats(c.get("loss_se"), f"{w}.loss_se", optional=True)
        acc = _floats(c.get("acc_mean"), f"{w}.acc_mean", optional=True)
        for name, arr in (("loss_mean", loss), ("loss_se", se), ("acc_mean", acc)):
            if arr is not None and len(arr) != len(eta):
                raise IntegrityError(f"audit.json: {w}.{name} has {len(arr)} values but eta has {len(eta)}")
        nd = c.get("n_directions")
        curves.append(CurveView(probe=str(c.get("probe", "gaussian")), split=str(c.get("split", "?")), eta=eta,
                                loss_mean=loss, loss_se=se, acc_mean=acc,
                                name=_str(c.get("label"), f"{w}.label", optional=True),
                                n_directions=_int(nd, f"{w}.n_directions", optional=True)))
    summary: list[tuple[str, str]] = []
    for key in ("sharpness", "curvature", "per_layer", "signal"):
        _flatten(key, land.get(key), summary)
    return LandscapeView(curves=tuple(curves), summary=tuple(summary))


SECRET_BOUND_METHODS = ("exposure", "extraction")


def _secrets(audit: dict[str, Any], estimates: tuple[EstimateView, ...]) -> SecretsView | None:
    sec = _obj(audit.get("secrets"), "secrets")
    if sec is None:
        return None
    exp = _obj(sec.get("exposure"), "secrets.exposure") or {}
    ext = _obj(sec.get("extraction"), "secrets.extraction") or {}
    means = []
    for key, label in (("mean_sampled", "mean exposure, sampled (bits)"),
                       ("mean_extrapolated", "mean exposure, extrapolated (bits, estimate)")):
        m = _obj(exp.get(key), f"secrets.exposure.{key}")
        if m is not None:
            means.append((label, _num(m.get("members"), f"secrets.exposure.{key}.members", optional=True),
                          _num(m.get("nonmembers"), f"secrets.exposure.{key}.nonmembers", optional=True)))
    totals = []
    tot = _obj(ext.get("totals"), "secrets.extraction.totals")
    if tot is not None:
        mem = _obj(tot.get("members"), "secrets.extraction.totals.members", optional=False)
        non = _obj(tot.get("nonmembers"), "secrets.extraction.totals.nonmembers", optional=False)
        for key, label in (("canaries", "canaries"), ("greedy_extracted", "extracted by greedy decoding"),
                           ("sampled_extracted_any", "extracted by at least one sample"),
                           ("extracted_any", "extracted (greedy or sampled)"), ("sampled_hits", "sampled hits")):
            totals.append((label, _int(mem.get(key), f"secrets.extraction.totals.members.{key}"),
                           _int(non.get(key), f"secrets.extraction.totals.nonmembers.{key}")))
    rows = []
    for i, r in enumerate(_list(sec.get("per_canary"), "secrets.per_canary")):
        w = f"secrets.per_canary[{i}]"
        r = _obj(r, w, optional=False)
        member = r.get("member")
        greedy = r.get("greedy_hit")
        if not isinstance(member, bool) or not (greedy is None or isinstance(greedy, bool)):
            raise IntegrityError(f"audit.json: {w}.member and {w}.greedy_hit must be true or false")
        rows.append(SecretRow(id=str(r.get("id")), member=member,
                              exposure=_num(r.get("exposure"), f"{w}.exposure", optional=True),
                              exposure_extrapolated=_num(r.get("exposure_extrapolated"), f"{w}.exposure_extrapolated",
                                                         optional=True),
                              greedy_hit=greedy, sampled_hits=_int(r.get("sampled_hits"), f"{w}.sampled_hits",
                                                                   optional=True)))
    note = ext.get("skipped") or ext.get("bound_note")
    return SecretsView(
        prefix=_str(sec.get("prefix"), "secrets.prefix", optional=True),
        space_size=_int(sec.get("space_size"), "secrets.space_size", optional=True),
        space_size_source=_str(sec.get("space_size_source"), "secrets.space_size_source", optional=True),
        n_candidates=_int(exp.get("n_candidates"), "secrets.exposure.n_candidates", optional=True),
        max_sampled=_num(exp.get("max_sampled"), "secrets.exposure.max_sampled", optional=True),
        max_extrapolated=_num(exp.get("max_extrapolated"), "secrets.exposure.max_extrapolated", optional=True),
        expected_unseen=_num(exp.get("expected_unseen"), "secrets.exposure.expected_unseen", optional=True),
        means=tuple(means), samples=_int(ext.get("samples"), "secrets.extraction.samples", optional=True),
        extraction_totals=tuple(totals), extraction_note=str(note) if note else None, rows=tuple(rows),
        bounds=tuple(e for e in estimates if e.method in SECRET_BOUND_METHODS or e.attack in SECRET_BOUND_METHODS))


def _manifest_view(manifest: dict[str, Any] | None) -> ManifestView | None:
    if manifest is None:
        return None
    kv = lambda d: tuple((str(k), str(v)) for k, v in (d or {}).items()) if isinstance(d, Mapping) else ()  # noqa: E731
    return ManifestView(run_id=str(manifest.get("run_id")), created=str(manifest.get("created")),
                        kind=str(manifest.get("kind")), tool_version=str(manifest.get("tool_version")),
                        data_fingerprint=manifest.get("data_fingerprint"), seeds=kv(manifest.get("seeds")),
                        artifacts=kv(manifest.get("artifacts")), environment=kv(manifest.get("environment")),
                        digest=str(manifest.get("digest")))


def _load_manifest(run_dir: Path) -> dict[str, Any] | None:
    if not (run_dir / MANIFEST).is_file():
        return None
    from dp_audit.manifest import load_manifest

    return load_manifest(run_dir, verify=False)  # digest and required keys; artifact hashes below


# ---------------------------------------------------------------------------------------------
# entry points


def load_audit(run_dir: str | Path) -> dict[str, Any]:
    """Read and minimally validate ``RUN/audit.json`` (missing: UsageError; malformed: IntegrityError)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory not found: {run_dir}")
    path = run_dir / AUDIT
    if not path.is_file():
        raise UsageError(f"{path} not found: run `dp-audit run --run {run_dir}` first")
    audit = read_json(path, what="audit.json", integrity=True)
    if not isinstance(audit, dict):
        raise IntegrityError(f"{path}: not a JSON object")
    missing = [k for k in ("schema_version", "claim", "attacks") if k not in audit]
    if missing:
        raise IntegrityError(f"{path}: missing key(s) {', '.join(missing)} (docs/formats.md)")
    if audit["schema_version"] != 1:
        raise IntegrityError(f"{path}: schema_version {audit['schema_version']!r} is not 1")
    return audit


def build_view(run_dir: str | Path, *, verify: bool = True) -> ReportView:
    """The view model of one run. With ``verify``, every file read that the manifest lists
    (audit.json, ledger.json, scores) must match its recorded sha256 (IntegrityError); the model
    itself is never read or hashed."""
    run_dir = Path(run_dir)
    audit = load_audit(run_dir)
    manifest = _load_manifest(run_dir)
    artifacts = manifest.get("artifacts", {}) if manifest else {}

    def check(rel: str) -> None:
        if verify and rel in artifacts:
            if not (run_dir / rel).is_file():  # listed, then deleted: never render without it
                raise IntegrityError(f"artifact listed in the manifest is missing: {run_dir / rel}")
            actual = sha256_file(run_dir / rel)
            if actual != artifacts[rel]:
                raise IntegrityError(f"sha256 mismatch for {run_dir / rel}: manifest {str(artifacts[rel])[:12]}…, "
                                     f"file {actual[:12]}…")

    check(AUDIT)
    claim = _obj(audit.get("claim"), "claim", optional=False)
    claimed = _num(claim.get("epsilon"), "claim.epsilon")
    delta = _num(claim.get("delta"), "claim.delta")
    threat_model = _str(audit.get("threat_model", "black-box"), "threat_model")
    ledger = None
    if (run_dir / LEDGER).is_file():
        check(LEDGER)
        ledger = read_json(run_dir / LEDGER, what="ledger", integrity=True)
        ledger = ledger if isinstance(ledger, dict) else None
    ceiling_raw = _obj(audit.get("ceiling"), "ceiling") or {}
    ceiling = {str(k): _num(v, f"ceiling.{k}") for k, v in ceiling_raw.items()}
    estimates = _estimates(audit, claimed, ceiling, threat_model)
    attacks = _attacks(audit, run_dir, check, threat_model)
    model = _obj(audit.get("model"), "model") or {}
    name = str(model.get("name") or run_dir.name)
    trainer = model.get("trainer")
    mode = model.get("mode")
    trainer_mode = (str(trainer) if trainer else "unknown trainer") + (f" ({mode})" if mode else "")
    can = _obj(audit.get("canaries"), "canaries") or {}
    man_claim = (manifest or {}).get("claim", {}) if manifest else {}
    return ReportView(
        run_dir=str(run_dir), run_id=str(audit.get("run_id") or run_dir.name), created=str(audit.get("created", "")),
        source=str(audit.get("source", "dp-audit")),
        model=tuple((k, str(model[k])) for k in ("name", "trainer", "mode", "tuning", "kind", "path", "adapter", "base")
                    if model.get(k) is not None),
        model_name=name, trainer_mode=trainer_mode, claimed_epsilon=claimed, delta=delta,
        accountant=str(claim.get("accountant", "?")), threat_model=threat_model,
        canaries=tuple((str(k), str(v)) for k, v in can.items() if v is not None),
        verdict=_verdict(audit, estimates, claimed, delta, threat_model),
        unaccounted=_unaccounted(("claim", claim.get("unaccounted")),
                                 ("ledger", (ledger or {}).get("unaccounted")),
                                 ("manifest", man_claim.get("unaccounted") if isinstance(man_claim, dict) else None),
                                 ("ledger", _replayable_noise(ledger))),
        attacks=attacks, estimates=estimates, ceiling=tuple(ceiling.items()), accounting=_accounting(audit),
        landscapes=_landscapes(audit), manifest=_manifest_view(manifest),
        reproduce=_str(audit.get("reproduce"), "reproduce", optional=True),
        secrets=_secrets(audit, estimates),
        audit_json=dumps_json(audit),
    )


@dataclass(frozen=True)
class ComparisonRow:
    label: str
    link: str  # relative link to the run's own report.html
    trainer_mode: str
    claimed_epsilon: float
    epsilon_lb_max: float | None
    best_attack: str | None
    best_auc: float | None
    tpr_at_0_1: float | None
    status: str
    verdict_line: str
    unaccounted: tuple[str, ...]


@dataclass(frozen=True)
class ComparisonView:
    rows: tuple[ComparisonRow, ...]
    views: tuple[tuple[str, ReportView], ...]


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [p.name or str(p) for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def build_comparison(run_dirs, *, verify: bool = True, out_dir: str | Path | None = None) -> ComparisonView:
    """The comparison of several runs: one row each, plus their views for overlaid figures."""
    import os

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UsageError("a comparison needs at least one run directory")
    views = [build_view(d, verify=verify) for d in dirs]
    rows = []
    for label, d, v in zip(_labels(dirs), dirs, views):
        best = v.best_attack
        link = (d / "report.html").as_posix()
        if out_dir is not None:
            link = Path(os.path.relpath(d.resolve() / "report.html", Path(out_dir).resolve())).as_posix()
        rows.append(ComparisonRow(
            label=label, link=link, trainer_mode=v.trainer_mode, claimed_epsilon=v.claimed_epsilon,
            epsilon_lb_max=v.verdict.epsilon_lb_max, best_attack=best.name if best else None,
            best_auc=best.auc if best else None, tpr_at_0_1=best.tpr_at(0.001) if best else None,
            status=v.verdict.status, verdict_line=v.verdict.line,
            unaccounted=tuple(u.component for u in v.unaccounted)))
    return ComparisonView(rows=tuple(rows), views=tuple(zip(_labels(dirs), views)))


__all__ = ["ReportView", "ComparisonView", "ComparisonRow", "build_comparison", "VerdictView", "AttackView", "EstimateView", "SecretsView", "SecretRow", "AccountingView", "LandscapeView",
           "CurveView", "ManifestView", "UnaccountedPart", "build_view", "load_audit", "fmt_eps", "fmt_num",
           "fmt_pct", "NOT_RUN", "NOT_GATED", "ESTIMATE_LABEL"]
