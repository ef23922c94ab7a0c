"""The step-audit output directory (run-like, DESIGN.md §3):

- ``trials.npz``: ``scores_d0`` and ``scores_d1`` (float64, one score per trial, in trial order;
  the first ``calibration_per_side`` of each chose the threshold), plus ``scores``/``member``
  (the pooled form that ``dp-audit estimate`` reads); no pickles;
- ``step_audit.json``: :meth:`StepAuditResult.to_dict` (claim, estimates, verdict, timings);
- ``manifest.json``: kind ``step-audit``, the configuration, the seed, the per-step claim, tool
  and library versions and the sha256 of both files; written last, each file atomically.

The three files are written into a temporary sibling of ``out`` that is renamed into place at the
end: ``out`` must be absent or empty, so no file dp-audit did not write is ever replaced, and a
killed step audit leaves no half-written ``out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import atomic_write_json, load_npz, read_json, save_npz
from dp_audit.manifest import MANIFEST, load_manifest, new_run_id, write_manifest
from dp_audit.rundir import OutputState, claim_output, staged_output
from dp_audit.stepaudit.result import KIND, StepAuditResult

TRIALS = "trials.npz"
RESULT = "step_audit.json"


def check_out(out: str | Path) -> OutputState:
    """``out`` can receive a new audit: absent or an empty directory (a directory holding files,
    e.g. an earlier audit or a user's ``trials.npz``, is refused: nothing is ever overwritten)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    if (out / MANIFEST).exists():
        raise UsageError(f"{out} already holds an audit ({MANIFEST}); choose another --out")
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; choose a new or empty directory")
    return claim_output(out, overwrite=False)


def write_step_audit(res: StepAuditResult, out: str | Path, *, config: Mapping[str, Any] | None = None,
                     run_id: str | None = None) -> Path:
    """Write the three files into a temporary sibling and rename it to ``out`` (which must be
    absent or empty: nothing already there is ever overwritten). ``run_id``: the manifest's run id
    (default a new one; the study gives its own, recorded before writing)."""
    out = Path(out)
    state = check_out(out)
    if res.scores_d0 is None or res.scores_d1 is None:
        raise UsageError("this result carries no trial scores (it was read from JSON); nothing to write")
    with staged_output(out, state) as tmp:
        _write_files(res, tmp, config, name=out.name, run_id=run_id)
    return out


def _write_files(res: StepAuditResult, out: Path, config: Mapping[str, Any] | None, *, name: str,
                 run_id: str | None = None) -> None:
    d0 = np.asarray(res.scores_d0, dtype=np.float64)
    d1 = np.asarray(res.scores_d1, dtype=np.float64)
    save_npz(out / TRIALS, scores_d0=d0, scores_d1=d1, scores=np.concatenate([d0, d1]),
             member=np.concatenate([np.zeros(d0.size, dtype=bool), np.ones(d1.size, dtype=bool)]))
    atomic_write_json(out / RESULT, res.to_dict())
    cfg = {"construction": res.construction, "trials": res.trials, "alpha": res.alpha, "delta": res.delta,
           "threshold": res.threshold, "calibration_per_side": res.calibration_trials,
           "construction_info": res.info, **dict(config or {}), "steps": res.steps}  # k: the result's, always
    claim = {**res.claim_dict(), "accountant": "gdp" if res.claim_mu is not None else
             ("pld" if res.steps > 1 else "construction")}
    write_manifest(out, kind=KIND, config=cfg, seeds={"seed": res.seed}, claim=claim, artifacts=[TRIALS, RESULT],
                   run_id=run_id or new_run_id(name))


def read_step_audit(path: str | Path) -> StepAuditResult:
    """Read a step-audit directory, verifying every hash (mismatch: IntegrityError, exit 3)."""
    path = Path(path)
    manifest = load_manifest(path)
    if manifest.get("kind") != KIND:
        raise UsageError(f"{path} is not a step-audit directory (manifest kind {manifest.get('kind')!r})")
    data = read_json(path / RESULT, what="step-audit result", integrity=True)
    try:
        res = StepAuditResult.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{path / RESULT}: malformed step-audit result ({exc})") from None
    z = load_npz(path / TRIALS, integrity=True)
    if "scores_d0" not in z or "scores_d1" not in z:
        raise IntegrityError(f"{path / TRIALS}: missing scores_d0/scores_d1")
    res = res.with_scores(z["scores_d0"], z["scores_d1"])
    claim = manifest.get("claim") or {}
    if (claim.get("epsilon"), claim.get("mu"), claim.get("delta")) != (res.claim_epsilon, res.claim_mu, res.delta):
        raise IntegrityError(f"{path / RESULT}: its claim differs from the manifest's")
    # the whole claim record (k, per-step claim, accountant), not only its ε/μ/δ: a step_audit.json
    # rewritten as a one-step audit of the k-step claim (or with another k) next to the manifest's
    # record is not accepted; nor is a manifest whose configuration ran another number of steps
    recorded = {k: v for k, v in claim.items() if k != "accountant"}
    if recorded != data.get("claim") or _config_steps(manifest) != res.steps:
        raise IntegrityError(f"{path / RESULT}: its claim or number of steps differs from the manifest's")
    check_consistent(res, where=str(path / RESULT))
    return res


def _config_steps(manifest: Mapping[str, Any]) -> Any:
    """The steps per trial of the manifest's configuration (1 when absent: directories written
    before k-step audits)."""
    cfg = manifest.get("config")
    return cfg.get("steps", 1) if isinstance(cfg, dict) else None


def recorded_methods(res: StepAuditResult) -> tuple[str, ...]:
    """The estimators a recorded step audit counts: Clopper-Pearson, and GDP under a μ-GDP claim
    (as :func:`dp_audit.stepaudit.audit.counted_methods` for its construction)."""
    return ("clopper-pearson", "gdp") if res.claim_mu is not None else ("clopper-pearson",)


def recompute_bounds(res: StepAuditResult, alpha: float) -> dict[str, float]:
    """Each counted estimator's ε_LB recomputed from the recorded trials at confidence 1 − ``alpha``
    (``alpha`` split evenly over the estimators), with the recorded δ, threshold strategy and
    calibration split: at ``res.alpha`` the audit's own bounds (:func:`check_consistent`), at a
    smaller α a family's share (dp_audit.study.familywise)."""
    from dp_audit.stepaudit import bounds

    s0 = np.asarray(res.scores_d0, dtype=np.float64).reshape(-1)
    s1 = np.asarray(res.scores_d1, dtype=np.float64).reshape(-1)
    methods = recorded_methods(res)
    n_cal = int(res.calibration_trials) if res.threshold == "calibration" else 0
    return {m: bounds.bound(s0, s1, method=m, alpha=alpha / len(methods), delta=float(res.delta),
                            threshold=res.threshold, calibration=n_cal).epsilon_lb for m in methods}


def check_consistent(res: StepAuditResult, *, where: str) -> None:
    """The recorded verdict is what the recorded trials and claim give: the bounds recomputed from
    the scores (same estimators, α split, δ, threshold strategy and calibration split), ε_LB
    their maximum, refuted iff one exceeds the claim, the claim's ε the ε of its μ. The hashes
    only say the files were not changed after the manifest; this says a consistent edit of
    step_audit.json (refuted: false next to a refuting bound) is not accepted (IntegrityError)."""
    from dp_audit.estimate.gdp_math import gdp_epsilon
    from dp_audit.stepaudit import bounds

    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{where}: inconsistent step-audit result ({what})")

    try:
        s0 = np.asarray(res.scores_d0, dtype=np.float64).reshape(-1)
        s1 = np.asarray(res.scores_d1, dtype=np.float64).reshape(-1)
        n, alpha, delta = int(res.trials), float(res.alpha), float(res.delta)
        claim = float(res.claim_epsilon)
        if s0.size != n or s1.size != n or not (np.all(np.isfinite(s0)) and np.all(np.isfinite(s1))):
            raise bad(f"trials.npz does not hold {n} finite scores per side")
        if not (0 < alpha < 0.5 and 0 < delta < 1 and claim >= 0) or res.threshold not in bounds.STRATEGIES:
            raise bad("alpha, delta, claim or threshold out of range")
        if res.claim_mu is not None:
            implied = gdp_epsilon(delta, float(res.claim_mu))
            if abs(implied - claim) > 1e-6 * max(1.0, implied):
                raise bad(f"claim ε {claim:g} is not the ε of μ={res.claim_mu:g} at δ={delta:g}")
        if int(res.steps) != 1 or res.composition is not None:
            _check_composition(res, bad)
        methods = recorded_methods(res)
        if tuple(e.method for e in res.estimates) != methods:
            raise bad(f"estimators {[e.method for e in res.estimates]}, the claim counts {list(methods)}")
        recomputed = recompute_bounds(res, alpha)
        for e in res.estimates:
            again = recomputed[e.method]
            if not np.isclose(float(e.epsilon_lb), again, rtol=1e-9, atol=1e-12):
                raise bad(f"{e.method} ε_LB {e.epsilon_lb} recorded, the trials give {again}")
            if bool(e.details.get("refutes")) != (again > claim):
                raise bad(f"{e.method} 'refutes' does not match its bound")
        eps_lb = max(float(e.epsilon_lb) for e in res.estimates)
        refuted = eps_lb > claim
        v = res.verdict
        if (not np.isclose(float(res.eps_lb), eps_lb, rtol=1e-12) or bool(res.refuted) != refuted
                or v.status != ("fail" if refuted else "pass") or float(v.claimed_epsilon) != claim
                or not np.isclose(float(v.epsilon_lb_max), eps_lb, rtol=1e-12) or int(v.n_tests) != len(methods)):
            raise bad(f"eps_lb/refuted/verdict do not follow from the bounds (ε_LB {eps_lb:g}, claim {claim:g})")
    except IntegrityError:
        raise
    except (UsageError, TypeError, ValueError, KeyError) as exc:
        raise bad(str(exc)) from None


def _check_composition(res: StepAuditResult, bad) -> None:
    """A k-step claim is the composition of the recorded per-step claim (recomputed here): a
    k-step audit tested against a per-step claim, or against a composition for another k, is an
    inconsistent result."""
    from dp_audit.estimate.gdp_math import gdp_epsilon
    from dp_audit.stepaudit.compose import compose_claim

    comp = res.composition or {}
    per = comp.get("per_step") or {}
    if int(res.steps) < 2 or int(comp.get("steps", -1)) != int(res.steps):
        raise bad(f"steps {res.steps} and its composition record disagree")
    mu, lap, eps = per.get("mu"), per.get("laplace_epsilon"), float(per["epsilon"])
    # the per-step record is one claim: its ε is the ε of its μ (GDP) or its ε0 (Laplace); the
    # composition below reads μ or ε0 only, so an edited per-step ε would otherwise go unnoticed
    if mu is not None and lap is not None:
        raise bad("the per-step claim has both a μ and a Laplace ε0")
    implied = gdp_epsilon(float(res.delta), float(mu)) if mu is not None else (float(lap) if lap is not None else eps)
    if abs(implied - eps) > 1e-6 * max(1.0, implied):
        raise bad(f"the per-step claim ε {eps:g} is not the ε of its {'μ' if mu is not None else 'ε0'} ({implied:g})")
    again = compose_claim(epsilon=eps, delta=float(res.delta), mu=mu, laplace_epsilon=lap, steps=int(res.steps))
    if comp.get("accountant") != again.accountant:
        raise bad(f"composition accountant {comp.get('accountant')!r}, the per-step claim composes by "
                  f"{again.accountant!r}")
    if not np.isclose(again.epsilon, float(res.claim_epsilon), rtol=1e-9) or \
            (again.mu is None) != (res.claim_mu is None) or \
            (again.mu is not None and not np.isclose(again.mu, float(res.claim_mu), rtol=1e-12)):
        raise bad(f"the claim (ε {res.claim_epsilon:g}, μ {res.claim_mu}) is not the composition of "
                  f"{res.steps} steps of the per-step claim (ε {again.epsilon:g}, μ {again.mu})")


__all__ = ["RESULT", "TRIALS", "check_consistent", "check_out", "read_step_audit", "write_step_audit"]
