"""`dp-audit estimate` through dp_audit.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dp_audit.cli import main
from dp_audit.estimate import estimate_epsilon
from dp_audit.io import save_npz


@pytest.fixture
def scores_file(tmp_path):
    rng = np.random.default_rng(0)
    member = rng.random(1000) < 0.5
    scores = rng.normal(3.0 * member, 1.0)
    path = tmp_path / "s.npz"
    save_npz(path, scores=scores, member=member)
    return path, scores, member


def test_json_output_matches_api(scores_file, capsys):
    path, scores, member = scores_file
    assert main(["estimate", "--scores", str(path), "--method", "fdp", "--alpha", "0.05", "--delta", "1e-5",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    api = estimate_epsilon(scores, member, method="fdp", alpha=0.05, delta=1e-5, rng=np.random.default_rng(0))
    assert out["epsilon_lb"] == pytest.approx(api.epsilon_lb) and out["method"] == "fdp" and out["is_bound"]


def test_text_output_and_fixed(scores_file, capsys):
    path, *_ = scores_file
    assert main(["estimate", "--scores", str(path), "--method", "steinke", "--threshold", "fixed",
                 "--fixed-k", "100,100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("steinke: ε_LB = ") and "r=200" in out
    assert main(["estimate", "--scores", str(path), "--method", "raw"]) == 0
    assert "not a bound" in capsys.readouterr().out


def test_list(capsys):
    assert main(["estimate", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in ("steinke", "fdp", "clopper-pearson", "gdp", "raw"))


@pytest.mark.parametrize("extra", [["--method", "nope"], ["--alpha", "2"], ["--threshold", "fixed"],
                                   ["--fixed-k", "a,b", "--threshold", "fixed"]])
def test_usage_errors(scores_file, capsys, extra):
    path, *_ = scores_file
    assert main(["estimate", "--scores", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_files(tmp_path, capsys):
    assert main(["estimate", "--scores", str(tmp_path / "missing.npz")]) == 2
    save_npz(tmp_path / "nan.npz", scores=np.array([0.0, np.nan]), member=np.array([True, False]))
    assert main(["estimate", "--scores", str(tmp_path / "nan.npz")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["estimate"]) == 2
