"""The study's sweeps are families of tests (issue 17 leftovers, docs/awp-leak.md "Sweeps"): the
points of a sweep share α (Bonferroni) and each point has its own derived, stable seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dp_audit.study.arms import SweepPoint, awp_leak_sweeps
from dp_audit.study.family import point_seed, sweep_plan
from dp_audit.study.row import RESULT, SweepRow
from dp_audit.study.runner import compute_sweep, run_study, study_settings

ALPHA = 0.05
K = 5
NULL = tuple(SweepPoint("null", "c", "x", float(v)) for v in range(K))


def _settings(seed: int) -> dict:
    return study_settings(quick=True, trials=1000, seed=seed)


def test_a_null_sweep_refutes_somewhere_in_at_most_alpha_of_the_studies():
    """Bug caught: every sweep point tested at the full α (no family-wise correction): a null
    sweep of K = 5 exact-level tests then refutes somewhere in 1 − 0.95⁵ ≈ 23% of the studies,
    not ≤ 5%. Simulation: each point is an exact level-a test (refutes iff U < a, U uniform from
    the point's own seed, a = the α share the study gives the point), over 3000 study seeds."""
    studies, hits = 3000, 0
    for s in range(studies):
        plans = sweep_plan(NULL, settings=_settings(s))
        hits += any(np.random.default_rng(p.seed).random() < p.alpha for p in plans)
    rate = hits / studies
    assert rate <= ALPHA + 3 * (ALPHA * (1 - ALPHA) / studies) ** 0.5, rate
    assert rate > 0.02  # the simulation is live: close to α, not trivially 0 (tests are exact)


def test_each_sweep_shares_alpha_over_its_own_points_only():
    """Bug caught: α divided over all sweeps' points together (9, too strict, and a sweep's level
    then depends on the other sweep) or not divided; the real sweeps: 4 γ points, 5 λ points."""
    plans = sweep_plan(awp_leak_sweeps(), settings=_settings(0))
    by = {p.point.sweep: p for p in plans}
    assert by["awp-gamma"].alpha == pytest.approx(ALPHA / 4) and by["awp-gamma"].family_size == 4
    assert by["distill-lambda"].alpha == pytest.approx(ALPHA / 5) and by["distill-lambda"].family_size == 5
    assert sum(p.alpha for p in plans if p.point.sweep == "awp-gamma") == pytest.approx(ALPHA)


def test_points_have_distinct_seeds_stable_across_reruns_and_orders():
    """Bug caught: every point reusing the study seed (the points' trials then share their noise
    draws: one unlucky stream moves every point together), a seed from the point's position
    (adding or reordering a point changes the others' numbers), or a seed not reproducible."""
    pts = awp_leak_sweeps()
    seeds = [p.seed for p in sweep_plan(pts, settings=_settings(0))]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [p.seed for p in sweep_plan(pts, settings=_settings(0))]  # rerun: same
    rev = {p.point.name: p.seed for p in sweep_plan(pts[::-1][:3], settings=_settings(0))}
    assert all(rev[p.name] == point_seed(0, p) for p in pts[::-1][:3])
    assert dict(zip([p.name for p in pts], seeds))[pts[-1].name] == rev[pts[-1].name]  # order-free
    assert seeds != [p.seed for p in sweep_plan(pts, settings=_settings(1))]  # the study seed matters
    assert point_seed(0, SweepPoint("s", "c", "x", 1.0, {"a": 1})) != point_seed(0, SweepPoint("s", "c", "x", 1.0))


def test_run_study_hands_each_point_its_share_and_seed_and_records_them(tmp_path):
    """Bug caught: the runner computing the plan but calling the point at the study's α (or seed),
    or a result of the old per-point-α definition reused (the definition must record α and seed)."""
    got = {}

    def sweep_fn(point, d, *, settings, alpha, seed, **_):
        got[point.name] = (alpha, seed)
        return SweepRow(name=point.name, sweep=point.sweep, construction=point.construction, option=point.option,
                        value=point.value, step_claim_epsilon=1.0, step_eps_lb=0.0, step_refuted=False,
                        alpha=alpha, seed=seed)

    settings = _settings(3)
    run_study(tmp_path, arms=(), sweeps=NULL, settings=settings, sweep_fn=sweep_fn, log=lambda s: None)
    plan = {p.point.name: (p.alpha, p.seed) for p in sweep_plan(NULL, settings=settings)}
    assert got == plan and all(a == pytest.approx(ALPHA / K) for a, _ in got.values())
    stored = json.loads((tmp_path / "sweeps" / NULL[0].name / RESULT).read_text())
    assert stored["definition"]["alpha"] == pytest.approx(ALPHA / K)
    assert stored["definition"]["seed"] == plan[NULL[0].name][1]
    assert stored["definition"]["correction"] == "bonferroni"
    md = (tmp_path / "study.md").read_text()
    assert "α/K (Bonferroni" in md and "| c | x | 0 | 0.01 |" in md


def test_compute_sweep_runs_the_step_audit_at_the_points_alpha_and_seed(tmp_path):
    """Bug caught: compute_sweep dropping its alpha/seed arguments (the step audit then runs at the
    study's α with seed·1000, as before), seen in the step audit's own files."""
    point = SweepPoint("mu-sweep", "gaussian", "mu", 1.0)
    (plan,) = sweep_plan((point, SweepPoint("mu-sweep", "gaussian", "mu", 2.0)), settings=_settings(0))[:1]
    row = compute_sweep(point, tmp_path, settings=_settings(0), alpha=plan.alpha, seed=plan.seed, progress=False)
    step = json.loads((tmp_path / "step" / "gaussian" / "step_audit.json").read_text())
    manifest = json.loads((tmp_path / "step" / "gaussian" / "manifest.json").read_text())
    assert step["alpha"] == pytest.approx(ALPHA / 2) and manifest["seeds"]["seed"] == plan.seed
    assert row.alpha == plan.alpha and row.seed == plan.seed and row.step_refuted is False
