"""One real arm of the study (train_run -> run_audit -> evaluate_gate, and step_audit) on the quick
config: the row's numbers are the ones in the files it wrote (issue 17)."""

from __future__ import annotations

import json

import pytest

from dp_audit.study.arms import awp_leak_arms
from dp_audit.study.runner import run_study, study_settings


def test_dpsgd_arm_row_matches_its_run_and_step_audit(tmp_path):
    """Bug caught: the row reading the wrong file or field (e.g. the ledger's observed-mechanism
    bound as the black-box ε_LB, the calibration rather than the claim, a step audit of another
    construction), a DP-SGD arm refuting its claim (a control must hold), and compute_arm ignoring
    the run ids the study recorded for its directories."""
    arm = next(a for a in awp_leak_arms() if a.name == "dpsgd")
    settings = study_settings(quick=True, trials=2000, seed=0)
    res = run_study(tmp_path, arms=(arm,), sweeps=(), settings=settings, log=lambda s: None)
    (row,) = res.arms
    run = tmp_path / "arms" / "dpsgd" / "run"
    audit = json.loads((run / "audit.json").read_text())
    step = json.loads((tmp_path / "arms" / "dpsgd" / "step" / "dpsgd-dirac" / "step_audit.json").read_text())
    assert row.claimed_epsilon == audit["claim"]["epsilon"]
    bb = [e["epsilon_lb"] for e in audit["estimates"] if e["threat_model"] == "black-box" and e["is_bound"]]
    assert row.blackbox_eps_lb == max(bb)
    assert row.step_eps_lb == step["eps_lb"] and row.step_claim_epsilon == step["claim"]["epsilon"]
    # the step is audited at the run's own noise (its per-step claim), not a fixed σ = 1
    sigma = json.loads((run / "ledger.json").read_text())["events"][-1]["noise_multiplier"]
    assert step["claim"]["mu"] == pytest.approx(1 / sigma) and sigma != 1.0
    assert step["construction"]["name"] == "dpsgd-dirac" and step["trials"]["per_side"] == 2000
    wb = [e["epsilon_lb"] for e in audit["estimates"] if e["threat_model"] == "white-box" and e["is_bound"]]
    assert wb and row.whitebox_eps_lb == max(wb)  # the Dirac-canary audit of the DP-SGD arm
    assert row.whitebox_eps_lb <= row.claimed_epsilon
    assert row.step_refuted is False and row.blackbox_refuted is False
    assert row.mia_auc == max(a["auc"] for a in audit["attacks"])
    assert (tmp_path / "comparison" / "report.html").is_file()
    assert json.loads((tmp_path / "study.json").read_text())["arms"][0]["step_eps_lb"] == row.step_eps_lb
    # the directories carry the run ids the study recorded before writing them (else a redo of this
    # arm would refuse the study's own directories), and are sealed
    written = json.loads((tmp_path / "written.json").read_text())["dirs"]
    step_dir = tmp_path / "arms" / "dpsgd" / "step" / "dpsgd-dirac"
    for rel, d in (("arms/dpsgd/run", run), ("arms/dpsgd/step/dpsgd-dirac", step_dir)):
        assert json.loads((d / "manifest.json").read_text())["run_id"] == written[rel]["run_id"]
        assert written[rel]["listing"] is not None


def test_run_noise_options_read_the_main_dp_event():
    """Bugs caught: the step constructions audited at σ = 1 whatever the run used; a Laplace run's
    ε per step ignored; a non-DP ledger crashing the study."""
    from dp_audit.study.runner import run_noise_options

    gauss = {"events": [{"mechanism": "subsampled_gaussian", "noise_multiplier": 9.0},
                        {"mechanism": "subsampled_gaussian", "noise_multiplier": 1.7}]}
    assert run_noise_options(gauss) == {"sigma": 1.7}
    assert run_noise_options({"events": [{"mechanism": "subsampled_laplace", "epsilon_step": 0.29}]}) == \
        {"epsilon_step": 0.29}
    assert run_noise_options({"events": [{"mechanism": "none"}]}) == {}
    assert run_noise_options({}) == {}
