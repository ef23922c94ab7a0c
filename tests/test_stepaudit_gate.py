"""`dp-audit gate` on a step-audit directory (issue 17: "our training step is DP" in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dp_audit.cli import main


@pytest.fixture(scope="module")
def audits(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("steps")
    out = {}
    for name, code in (("dpsgd-dirac", 0), ("dpflat-awp-paper", 1)):
        out[name] = root / name
        assert main(["step-audit", "--construction", name, "--trials", "2000", "--out", str(out[name]),
                     "--no-progress"]) == code
    return out


def test_gate_passes_dpsgd_and_refutes_paper_awp(audits, capsys):
    """Bugs caught: the gate not accepting a step-audit directory (exit 2: no audit.json), or
    gating it as a run (no attacks); a refuted step not failing CI."""
    assert main(["gate", "--run", str(audits["dpsgd-dirac"]), "--quiet"]) == 0
    assert main(["gate", "--run", str(audits["dpflat-awp-paper"]), "--quiet"]) == 1
    assert "step-level" in capsys.readouterr().out


def test_gate_recomputes_instead_of_trusting_the_stored_verdict(audits, tmp_path):
    """Bug caught: a gate that reads step_audit.json's verdict: rewriting it to "pass" (hashes and
    digest redone, as a careful tamperer would) must not turn a refuted step into a pass. The
    reader recomputes the bounds from trials.npz and refuses the contradiction (exit 3)."""
    import shutil

    from dp_audit.manifest import add_artifacts

    run = tmp_path / "r"
    shutil.copytree(audits["dpflat-awp-paper"], run)
    data = json.loads((run / "step_audit.json").read_text())
    data["verdict"]["status"], data["refuted"], data["eps_lb"] = "pass", False, 0.0
    data["verdict"]["epsilon_lb_max"] = 0.0
    (run / "step_audit.json").write_text(json.dumps(data))
    add_artifacts(run, ["step_audit.json"])
    assert main(["gate", "--run", str(run), "--quiet"]) == 3


def test_gate_on_tampered_trials_is_integrity_error(audits, tmp_path):
    """Bug caught: trials.npz edited (scores swapped) without its hash being checked."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(audits["dpsgd-dirac"], run)
    z = dict(np.load(run / "trials.npz"))
    z["scores_d1"] = z["scores_d1"] + 100.0
    np.savez(run / "trials.npz", **z)
    assert main(["gate", "--run", str(run), "--quiet"]) == 3


def test_gate_policy_tolerance_and_alpha_apply(audits, tmp_path):
    """Bug caught: the policy ignored on step audits (tolerance not added to the claim)."""
    policy = tmp_path / "gate.toml"
    policy.write_text("tolerance = 1000.0\nalpha = 0.01\n")
    assert main(["gate", "--run", str(audits["dpflat-awp-paper"]), "--policy", str(policy), "--quiet"]) == 0
