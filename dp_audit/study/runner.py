"""Run the study: every arm and sweep point once, resumably (docs/awp-leak.md "The study").

Each arm writes into ``DIR/arms/<name>/``: ``run/`` (the trained run, audited: audit.json,
summary.md), ``step/<construction>/`` (the step-level audits) and last ``result.json`` (the row,
hash-checked). A rerun skips an arm whose result.json is valid and redoes any other one (a killed
arm has no result.json); :mod:`.store` decides what may be replaced. Sweep points likewise in
``DIR/sweeps/<name>/``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from dp_audit.study.arms import (FULL_BASE, FULL_TRIALS, QUICK_BASE, QUICK_TRIALS, Arm, SweepPoint, merge)
from dp_audit.study.family import CORRECTION, PointPlan, arm_step_seeds, sweep_plan
from dp_audit.study.row import RESULT, ArmRow, SweepRow, read_result, write_result
from dp_audit.study.store import Owned, open_study_dir, study_id_of
from dp_audit.errors import UsageError

ARM_JOB = "dp_audit.study.runner:arm_job"
SWEEP_JOB = "dp_audit.study.runner:sweep_job"

STUDY = "awp-leak"
ALPHA = 0.05
ESTIMATORS = ("fdp", "steinke")  # the gate splits α over both


@dataclass(frozen=True)
class StudyResult:
    out: Path
    arms: tuple[ArmRow, ...]
    sweeps: tuple[SweepRow, ...]
    computed: tuple[str, ...]  # names done in this invocation
    skipped: tuple[str, ...]  # names whose valid result was reused


def study_settings(*, quick: bool, trials: int | None, seed: int) -> dict[str, Any]:
    """What makes two studies the same study (recorded in DIR/study-dir.json and every result)."""
    return {"study": STUDY, "quick": bool(quick), "seed": int(seed), "alpha": ALPHA,
            "trials": int(trials if trials is not None else (QUICK_TRIALS if quick else FULL_TRIALS))}


def arm_definition(arm: Arm, *, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the arm *is* (its result is stale when this changes): the merged run config, the step
    constructions, its group and component, and the tool version that computes it."""
    from dp_audit import __version__

    base = QUICK_BASE if settings["quick"] else FULL_BASE
    return {"config": merge(base, arm.spec), "constructions": list(arm.constructions), "group": arm.group,
            "label": arm.label, "component": arm.component, "tool_version": __version__,
            "step_seeds": list(arm_step_seeds(settings["seed"], arm.name, len(arm.constructions)))}


def sweep_definition(plan: PointPlan) -> dict[str, Any]:
    """What a sweep point *is*: its construction, option, value and extra options, its share of the
    family's α (and the family's size), its derived seed, and the tool version."""
    from dp_audit import __version__

    point = plan.point
    return {"sweep": point.sweep, "construction": point.construction, "option": point.option,
            "value": float(point.value), "options": dict(point.options), "alpha": plan.alpha,
            "family_size": plan.family_size, "correction": CORRECTION, "seed": plan.seed,
            "tool_version": __version__}


# --------------------------------------------------------------------------- one arm


def _step_audits(constructions: Sequence[str], d: Path, *, trials: int, seed: int, alpha: float,
                 progress: bool, options: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
                 run_ids: Mapping[str, str] | None = None):
    """Each construction at α/k into ``d/<construction>`` (seed ``seeds[j]``, default seed·1000 + j;
    manifest run id ``run_ids[construction]``, the one the study recorded); returns the results."""
    from dp_audit.stepaudit import step_audit
    from dp_audit.stepaudit.audit import DEFAULT_CALIBRATION_FRACTION
    from dp_audit.stepaudit.output import write_step_audit
    from dp_audit.stepaudit.constructions import build
    from dp_audit.stepaudit.trials import DEFAULT_CHUNK

    out = []
    for j, name in enumerate(constructions):
        res = step_audit(build(name, **dict(options or {})), trials=trials, alpha=alpha / len(constructions),
                         seed=seeds[j] if seeds is not None else seed * 1000 + j, progress=progress)
        write_step_audit(res, d / name, run_id=(run_ids or {}).get(name),
                         config={"chunk": DEFAULT_CHUNK, "calibration_fraction": DEFAULT_CALIBRATION_FRACTION})
        out.append(res)
    return out


def _best(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return max(values) if values else None


def whitebox_eps_lb(audit: Mapping[str, Any]) -> float | None:
    """The largest white-box bound in an audit.json (e.g. the one-run Dirac-canary audit), else None."""
    return _best(e.get("epsilon_lb") for e in audit.get("estimates", [])
                 if isinstance(e, dict) and e.get("threat_model") == "white-box" and e.get("is_bound", True))


def _resumable(d: Path, name: str, definition: Mapping[str, Any], compute, *, settings: Mapping[str, Any],
               computed: list[str], skipped: list[str]):
    """The row of ``name``: its valid earlier result in ``d`` (same settings and definition, hash
    checked) if there is one, else ``compute()`` written atomically. Records which it was."""
    row = read_result(d / RESULT, name=name, settings=settings, definition=definition)
    if row is not None:
        skipped.append(name)
        return row
    row = compute()
    write_result(d / RESULT, row, settings=settings, definition=definition)
    computed.append(name)
    return row


@contextlib.contextmanager
def _owning(owned: Owned, paths: Mapping[str, Path], definition: Mapping[str, Any]):
    """Claim every path before the work (refusing, untouched, anything the study did not write),
    yield the recorded run ids, and seal the directories once the work is done."""
    from dp_audit.io import canonical_fingerprint

    sha = canonical_fingerprint(dict(definition))
    for p in paths.values():  # every path vetted before any is touched
        owned.vet(p)
    ids = {key: owned.claim(p, definition_sha256=sha) for key, p in paths.items()}
    yield ids
    for p in paths.values():
        owned.seal(p)


def run_noise_options(ledger: Mapping[str, Any]) -> dict[str, float]:
    """The step constructions' noise option from the run's own ledger, so that the step-level
    column audits the mechanism at the noise the run used (its per-step claim): ``sigma`` (the
    noise multiplier of a Gaussian event) or ``epsilon_step`` (a Laplace event); {} otherwise."""
    events = [e for e in ledger.get("events", []) if isinstance(e, Mapping)]
    main = events[-1] if events else {}  # the main DP run (DP-Flat may list a selection run first)
    if main.get("mechanism") == "subsampled_gaussian" and main.get("noise_multiplier", 0) > 0:
        return {"sigma": float(main["noise_multiplier"])}
    if main.get("mechanism") == "subsampled_laplace" and main.get("epsilon_step", 0) > 0:
        return {"epsilon_step": float(main["epsilon_step"])}
    return {}


def best_mia(audit: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(best AUC, best TPR at 1% FPR) over the attacks of an audit.json."""
    attacks = [a for a in audit.get("attacks", []) if isinstance(a, dict)]
    return (_best(a.get("auc") for a in attacks),
            _best((a.get("tpr_at_fpr") or {}).get("0.01") for a in attacks))


def arm_paths(arm: Arm, arm_dir: Path) -> dict[str, Path]:
    """The directories an arm writes: ``run`` and one step-audit directory per construction."""
    return {"run": arm_dir / "run", **{c: arm_dir / "step" / c for c in arm.constructions}}


def arm_config(arm: Arm, *, settings: Mapping[str, Any], cache_dir: Path, progress: bool):
    """The run config of an arm: the study's base config, the arm's sections, the study's seeds."""
    from dp_audit.config import run_config_from_dict

    seed = settings["seed"]
    base = QUICK_BASE if settings["quick"] else FULL_BASE
    return run_config_from_dict(merge(merge(base, arm.spec), {
        "name": arm.name, "model": {"cache_dir": str(cache_dir)},
        "train": {"seed": seed, "progress": progress}, "canaries": {"seed": seed + 1}}))


def compute_arm(arm: Arm, arm_dir: Path, *, settings: Mapping[str, Any], cache_dir: Path, progress: bool,
                run_ids: Mapping[str, str] | None = None) -> ArmRow:
    """Train, audit end to end, gate; then the step-level audits. Returns the arm's row.
    ``run_ids``: the run id of each directory (:func:`arm_paths`), as the study recorded them."""
    from dp_audit.audit import run_audit, target_from_run
    from dp_audit.config import AuditConfig, from_mapping, run_config_from_dict
    from dp_audit.gate import GatePolicy, evaluate_gate, write_outputs
    from dp_audit.io import read_json
    from dp_audit.manifest import load_manifest
    from dp_audit.trainers.base import train_run

    seed = settings["seed"]
    cfg = arm_config(arm, settings=settings, cache_dir=cache_dir, progress=progress)
    t0 = time.time()
    run_dir = train_run(cfg, arm_dir / "run", progress=progress, run_id=(run_ids or {}).get("run"))
    t1 = time.time()
    audit_cfg = from_mapping(AuditConfig, {"attacks": ["loss"], "estimators": list(ESTIMATORS),
                                           "alpha": settings["alpha"], "formats": ["json"]})
    run_audit(target_from_run(run_dir), audit_cfg, progress=progress)
    gate = evaluate_gate(run_dir, GatePolicy(estimators=audit_cfg.estimators, alpha=audit_cfg.alpha,
                                             fdp_null=audit_cfg.fdp_null))
    write_outputs(gate, summary=run_dir / "summary.md", junit=run_dir / "gate.junit.xml")
    audit = read_json(run_dir / "audit.json", integrity=True)
    claimed = gate.verdict.claimed_epsilon
    bb = _best(e.epsilon_lb for e in gate.estimates if e.is_bound and e.threat_model == "black-box")
    wb = whitebox_eps_lb(audit)
    auc, tpr = best_mia(audit)
    acc = load_manifest(run_dir).get("notes", {}).get("metrics", {}).get("test_accuracy")
    t2 = time.time()
    seeds = arm_step_seeds(seed, arm.name, len(arm.constructions))  # the arm's own stream (family.py)
    steps = _step_audits(arm.constructions, arm_dir / "step", trials=settings["trials"], seed=seed,
                         alpha=settings["alpha"], progress=progress, seeds=seeds,
                         options={**run_noise_options(read_json(run_dir / "ledger.json", integrity=True)),
                                  "delta": float(cfg.privacy.delta)},  # the run's own noise and δ
                         run_ids=run_ids)
    top = max(steps, key=lambda r: r.eps_lb - r.claim_epsilon) if steps else None
    return ArmRow(
        name=arm.name, label=arm.label, group=arm.group, component=arm.component, claimed_epsilon=claimed,
        step_constructions=tuple(arm.constructions),
        step_claim_epsilon=top.claim_epsilon if top else None, step_eps_lb=top.eps_lb if top else None,
        step_refuted=any(r.refuted for r in steps) if steps else None,
        step_results={c: {"eps_lb": r.eps_lb, "claim_epsilon": r.claim_epsilon, "refuted": bool(r.refuted),
                          "seed": int(sd), "alpha": settings["alpha"] / len(arm.constructions)}
                      for c, r, sd in zip(arm.constructions, steps, seeds)},
        blackbox_eps_lb=bb, blackbox_refuted=(bb > claimed) if bb is not None else None, whitebox_eps_lb=wb,
        mia_auc=auc, mia_tpr_at_1pct_fpr=tpr,
        test_accuracy=acc,
        timings={"train_s": round(t1 - t0, 2), "audit_s": round(t2 - t1, 2), "step_s": round(time.time() - t2, 2)})


def compute_sweep(point: SweepPoint, d: Path, *, settings: Mapping[str, Any], alpha: float, seed: int,
                  progress: bool, run_ids: Mapping[str, str] | None = None) -> SweepRow:
    """One sweep point's step audit at its share ``alpha`` of the family's α, with its own ``seed``."""
    t0 = time.time()
    (res,) = _step_audits((point.construction,), d / "step", trials=settings["trials"], seed=settings["seed"],
                          alpha=alpha, progress=progress, options={**point.options, point.option: point.value},
                          seeds=(seed,), run_ids=run_ids)
    return SweepRow(name=point.name, sweep=point.sweep, construction=point.construction, option=point.option,
                    value=point.value, step_claim_epsilon=res.claim_epsilon, step_eps_lb=res.eps_lb,
                    step_refuted=res.refuted, alpha=alpha, seed=seed,
                    timings={"step_s": round(time.time() - t0, 2)})


# --------------------------------------------------------------------------- the study


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def run_study(out: str | Path, *, arms: Sequence[Arm], sweeps: Sequence[SweepPoint], settings: Mapping[str, Any],
              arm_fn: Callable[..., ArmRow] | None = None, sweep_fn: Callable[..., SweepRow] | None = None,
              progress: bool = False, log: Callable[[str], None] = print, scale: Any = None,
              jobs: tuple[str, str] = (ARM_JOB, SWEEP_JOB)) -> StudyResult:
    """Run (or resume) the study in ``out``; write study.json, study.md, study.html (and the
    comparison report of the run directories). ``arm_fn``/``sweep_fn`` replace the real work (tests).
    ``scale`` (a :class:`dp_audit.scale.ScaleConfig`): the arms and sweep points not done yet run as
    tasks on its backend (``jobs``: the task functions, replaceable by tests); None: one after the
    other in this process."""
    from dp_audit.study.render import write_outputs

    if scale is not None:
        if arm_fn is not None or sweep_fn is not None:
            raise UsageError("run_study: arm_fn/sweep_fn run in this process; with scale give jobs= instead")
        result = _run_study_tasks(Path(out), arms=arms, sweeps=sweeps, settings=settings, progress=progress,
                                  log=log, scale=scale, jobs=jobs)
        write_outputs(result[0], settings=settings, elapsed_s=result[1], log=log)
        return result[0]

    out = open_study_dir(Path(out), study=STUDY, settings=settings)
    owned = Owned(out, study_id_of(out))
    cache_dir = (out / "cache").resolve()
    t0 = time.time()
    computed, skipped = [], []
    arm_rows: list[ArmRow] = []
    for i, arm in enumerate(arms, 1):
        d = out / "arms" / arm.name

        def compute(arm=arm, d=d, i=i):
            log(f"[study] arm {i}/{len(arms)} {arm.name}: training, auditing, step-level audit ...")
            t = time.time()
            paths = arm_paths(arm, d)
            with _owning(owned, paths, arm_definition(arm, settings=settings)) as run_ids:
                row = (compute_arm(arm, d, settings=settings, cache_dir=cache_dir, progress=progress, run_ids=run_ids)
                       if arm_fn is None else arm_fn(arm, d, settings=settings, run_ids=run_ids))
            log(f"[study]   {arm.name}: claimed ε {_fmt(row.claimed_epsilon)}, step ε_LB {_fmt(row.step_eps_lb)} "
                f"(per-step claim {_fmt(row.step_claim_epsilon)}), black-box ε_LB {_fmt(row.blackbox_eps_lb)}, "
                f"white-box ε_LB {_fmt(row.whitebox_eps_lb)}, "
                f"MIA AUC {_fmt(row.mia_auc)}, test acc {_fmt(row.test_accuracy)} [{time.time() - t:.0f} s]")
            return row

        row = _resumable(d, arm.name, arm_definition(arm, settings=settings), compute, settings=settings,
                         computed=computed, skipped=skipped)
        if arm.name in skipped:
            log(f"[study] arm {i}/{len(arms)} {arm.name}: done earlier, result reused")
        arm_rows.append(row)
    sweep_rows: list[SweepRow] = []
    for i, plan in enumerate(sweep_plan(sweeps, settings=settings), 1):
        point = plan.point
        d = out / "sweeps" / point.name

        def compute_point(point=point, d=d, i=i, plan=plan):
            with _owning(owned, {point.construction: d / "step" / point.construction}, sweep_definition(plan)) as ids:
                row = (compute_sweep(point, d, settings=settings, alpha=plan.alpha, seed=plan.seed, progress=progress,
                                     run_ids=ids)
                       if sweep_fn is None else sweep_fn(point, d, settings=settings, alpha=plan.alpha, seed=plan.seed,
                                                         run_ids=ids))
            log(f"[study] sweep {i}/{len(sweeps)} {point.construction} {point.option}={point.value:g}: "
                f"ε_LB {row.step_eps_lb:.2f} vs per-step claim {row.step_claim_epsilon:.2f}"
                f"{' REFUTED' if row.step_refuted else ''}")
            return row

        row = _resumable(d, point.name, sweep_definition(plan), compute_point, settings=settings,
                         computed=computed, skipped=skipped)
        sweep_rows.append(row)
    result = StudyResult(out, tuple(arm_rows), tuple(sweep_rows), tuple(computed), tuple(skipped))
    write_outputs(result, settings=settings, elapsed_s=time.time() - t0, log=log)
    return result


# --------------------------------------------------------------------------- the study as tasks


def arm_job(arm: Arm, arm_dir: Path, *, settings: Mapping[str, Any], cache_dir: Path, run_ids: Mapping[str, str]) -> ArmRow:
    """The real work of one arm in a worker (no progress bars: one bar over the tasks)."""
    return compute_arm(arm, arm_dir, settings=settings, cache_dir=cache_dir, progress=False, run_ids=run_ids)


def sweep_job(point: SweepPoint, d: Path, *, settings: Mapping[str, Any], alpha: float, seed: int,
              run_ids: Mapping[str, str]) -> SweepRow:
    return compute_sweep(point, d, settings=settings, alpha=alpha, seed=seed, progress=False, run_ids=run_ids)


def study_task(kind: str, job: str, payload: dict, d: str, settings: dict, run_ids: dict,
               cache_dir: str = "", alpha: float = 0.0, seed: int = 0, family_size: int = 0) -> dict:
    """One arm or sweep point as a scale-out task (plain data in and out): run ``job`` (an importable
    ``module:function`` with :func:`arm_job`'s or :func:`sweep_job`'s signature) and write the
    row's result.json in its own directory (hash-checked on resume, as in the serial path)."""
    from dp_audit.scale.task import resolve

    fn = resolve(job)
    if kind == "arm":
        arm = Arm(**{**payload, "constructions": tuple(payload["constructions"])})
        row = fn(arm, Path(d), settings=settings, cache_dir=Path(cache_dir), run_ids=run_ids)
        definition = arm_definition(arm, settings=settings)
    else:
        point = SweepPoint(**payload)
        row = fn(point, Path(d), settings=settings, alpha=alpha, seed=seed, run_ids=run_ids)
        definition = sweep_definition(PointPlan(point=point, alpha=alpha, seed=seed, family_size=family_size))
    write_result(Path(d) / RESULT, row, settings=settings, definition=definition)
    return str(Path(d) / RESULT)  # the parent reads the row back from it (its own encoding, NaN/∞ included)


def _run_study_tasks(out: Path, *, arms: Sequence[Arm], sweeps: Sequence[SweepPoint], settings: Mapping[str, Any],
                     progress: bool, log: Callable[[str], None], scale: Any, jobs: tuple[str, str]):
    """The study with its pending arms and sweep points as tasks. The parent does what touches
    shared files: it vets and claims every directory (written.json) before any task starts,
    prepares the shared backbone once, and seals each finished directory afterwards."""
    import dataclasses

    from dp_audit.io import canonical_fingerprint, dumps_json
    from dp_audit.scale import Task, run_tasks

    out = open_study_dir(out, study=STUDY, settings=settings)
    owned = Owned(out, study_id_of(out))
    cache_dir = (out / "cache").resolve()
    t0 = time.time()
    plain = lambda x: __import__("json").loads(dumps_json(x))  # noqa: E731
    rows: dict[str, Any] = {}
    skipped: list[str] = []
    pending: list[tuple[str, Path, Mapping[str, Any], Mapping[str, Path], dict]] = []
    for arm in arms:
        d = out / "arms" / arm.name
        definition = arm_definition(arm, settings=settings)
        row = read_result(d / RESULT, name=arm.name, settings=settings, definition=definition)
        if row is not None:
            rows[arm.name] = row
            skipped.append(arm.name)
            continue
        pending.append((arm.name, d, definition, arm_paths(arm, d),
                        {"kind": "arm", "job": jobs[0], "payload": plain(dataclasses.asdict(arm)), "d": str(d),
                         "cache_dir": str(cache_dir)}))
    for plan in sweep_plan(sweeps, settings=settings):
        point, d = plan.point, out / "sweeps" / plan.point.name
        definition = sweep_definition(plan)
        row = read_result(d / RESULT, name=point.name, settings=settings, definition=definition)
        if row is not None:
            rows[point.name] = row
            skipped.append(point.name)
            continue
        pending.append((point.name, d, definition, {point.construction: d / "step" / point.construction},
                        {"kind": "sweep", "job": jobs[1], "payload": plain(dataclasses.asdict(point)), "d": str(d),
                         "alpha": plan.alpha, "seed": plan.seed, "family_size": plan.family_size}))
    for _, _, _, paths, _ in pending:  # every directory vetted before any is touched
        for p in paths.values():
            owned.vet(p)
    tasks = []
    for name, d, definition, paths, kwargs in pending:
        sha = canonical_fingerprint(dict(definition))
        run_ids = {key: owned.claim(p, definition_sha256=sha) for key, p in paths.items()}
        tasks.append(Task(key=name, fn="dp_audit.study.runner:study_task",
                          kwargs={**kwargs, "settings": plain(dict(settings)), "run_ids": run_ids}))
    first_arm = next((a for a in arms if a.name in {t.key for t in tasks}), None)
    if first_arm is not None and jobs[0] == ARM_JOB:  # the shared backbone, once, before the workers start
        from dp_audit.trainers.base import prepare

        prepare(arm_config(first_arm, settings=settings, cache_dir=cache_dir, progress=False), cache_root=cache_dir,
                progress=progress)
    log(f"[study] {len(tasks)} task(s) to run on the {scale.backend} backend, {len(skipped)} reused")
    try:
        run_tasks(tasks, scale=scale, desc="study", progress=progress)
    finally:  # seal what finished (a failed task's directories stay claimed, redone on the rerun)
        for name, d, definition, paths, _ in pending:
            if (d / RESULT).is_file():
                for p in paths.values():
                    if p.exists():
                        owned.seal(p)
    from dp_audit.errors import IntegrityError

    for name, d, definition, _, _ in pending:
        row = read_result(d / RESULT, name=name, settings=settings, definition=definition)
        if row is None:
            raise IntegrityError(f"{d / RESULT}: the task finished but its result does not match its definition")
        rows[name] = row
    arm_rows = tuple(rows[a.name] for a in arms)
    sweep_rows = tuple(rows[p.name] for p in sweeps)
    computed = tuple(t.key for t in tasks)
    return StudyResult(out, arm_rows, sweep_rows, computed, tuple(skipped)), time.time() - t0
