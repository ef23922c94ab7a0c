"""docs/awp-leak.md's example (a team's own plain Opacus loop audited with step_audit) runs as
written, with fewer trials."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "awp-leak.md"


def test_plain_opacus_loop_example_runs_and_is_not_refuted(tmp_path, monkeypatch):
    """The doc's example builds a Construction around a plain Opacus step and audits it. Catches
    an API change that breaks the documented example (signature of step_fn, statistic, claim) and
    a gradient canary that the example's statistic does not see (ε_LB = 0)."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "def step_fn(state, batch, generator)" in b)
    assert "TRIALS = 20_000" in code
    code = code.replace("TRIALS = 20_000", "TRIALS = 400").replace("seed=0, out=", "seed=0, progress=False, out=")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
    res = ns["res"]
    assert 0 < res.eps_lb <= res.claim_epsilon and not res.refuted
    data = json.loads((tmp_path / "runs" / "my-step" / "step_audit.json").read_text())
    assert data["construction"]["name"] == "my-opacus-step"
