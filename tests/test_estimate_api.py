"""The estimate_epsilon API: inputs, records, the registry contract, no torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from dp_audit.errors import UsageError
from dp_audit.estimate import BOUND_METHODS, ESTIMATORS, METHODS, STRATEGIES, estimate_epsilon
from dp_audit.records import EpsilonEstimate


def gaussian(mu=2.0, m=400, seed=0):
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    return rng.normal(mu * member, 1.0), member


def test_methods_and_strategies():
    assert set(METHODS) == {"steinke", "fdp", "clopper-pearson", "gdp", "raw"}
    assert "raw" not in BOUND_METHODS and set(STRATEGIES) == {"bonferroni", "heldout", "fixed"}


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
@pytest.mark.parametrize("strategy", ["bonferroni", "heldout", "fixed"])
def test_contract(method, strategy):
    scores, member = gaussian()
    kw = {"fixed_k": (50, 50), "fixed_threshold": 1.0} if strategy == "fixed" else {}
    if method in ("clopper-pearson", "gdp", "raw"):
        kw.pop("fixed_k", None)
    else:
        kw.pop("fixed_threshold", None)
    est = estimate_epsilon(scores, member, method=method, threshold=strategy, alpha=0.05, delta=1e-5, **kw)
    assert isinstance(est, EpsilonEstimate)
    assert est.method == method and est.threshold == strategy and est.alpha == 0.05 and est.delta == 1e-5
    assert est.epsilon_lb >= 0 and np.isfinite(est.epsilon_lb)
    assert est.is_bound == (method != "raw")
    assert EpsilonEstimate.from_dict(est.to_dict()) == est
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.epsilon_lb = 99.0  # type: ignore[misc]
    if method in ("steinke", "fdp"):
        assert est.r is not None and 0 <= est.v <= est.r <= est.m
        assert {"k_plus", "k_minus"} <= set(est.counts)


def test_raw_is_marked_not_a_bound():
    est = estimate_epsilon(*gaussian(), method="raw")
    assert est.is_bound is False and "not a bound" in est.details["note"]


@pytest.mark.parametrize("bad", [
    dict(method="stienke"), dict(threshold="pareto"), dict(alpha=0.0), dict(alpha=0.7), dict(delta=1.0),
    dict(threat_model="grey-box"), dict(threshold="fixed"),
])
def test_bad_arguments_are_usage_errors(bad):
    with pytest.raises(UsageError):
        estimate_epsilon(*gaussian(), **bad)


def test_nan_scores_and_one_class_are_usage_errors():
    scores, member = gaussian()
    scores[3] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        estimate_epsilon(scores, member)
    with pytest.raises(UsageError):
        estimate_epsilon(np.arange(10.0), np.ones(10, bool))
    with pytest.raises(UsageError):
        estimate_epsilon(np.arange(10.0), np.ones(9, bool))


def test_deterministic_given_rng():
    scores, member = gaussian(mu=1.0)
    a = estimate_epsilon(scores, member, method="steinke", threshold="heldout", rng=np.random.default_rng(7))
    b = estimate_epsilon(scores, member, method="steinke", threshold="heldout", rng=np.random.default_rng(7))
    assert a == b


def test_tied_scores_do_not_leak_file_order():
    """All scores equal, members listed first: a fixed tie order would guess perfectly."""
    member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    for method in BOUND_METHODS:
        assert estimate_epsilon(np.zeros(1000), member, method=method).epsilon_lb == 0.0, method


def test_perfect_separation_gives_large_bounds():
    member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scores = member.astype(float)
    for method in BOUND_METHODS:
        assert estimate_epsilon(scores, member, method=method).epsilon_lb > 3.5, method


def test_fdp_tighter_than_steinke_on_same_scores():
    scores, member = gaussian(mu=3.0, m=1000, seed=3)
    s = estimate_epsilon(scores, member, method="steinke").epsilon_lb
    f_ed = estimate_epsilon(scores, member, method="fdp").epsilon_lb  # (ε, δ) null: valid for any mechanism
    f_gdp = estimate_epsilon(scores, member, method="fdp", fdp_null="gdp").epsilon_lb
    assert f_gdp >= 1.4 * s > 0  # the GDP null (this mechanism is μ-GDP)
    assert f_ed >= s  # the recursion handles δ better than Steinke's 2mδ·a term
    assert f_gdp > f_ed


def test_fdp_null_is_recorded_and_checked():
    scores, member = gaussian(mu=2.0, m=200, seed=1)
    est = estimate_epsilon(scores, member, method="fdp", fdp_null="gdp")
    assert est.details["null"] == "gdp"
    assert estimate_epsilon(scores, member, method="fdp").details["null"] == "eps-delta"
    with pytest.raises(UsageError, match="null"):
        estimate_epsilon(scores, member, method="fdp", fdp_null="laplace")


def test_no_torch_import():
    code = ("import sys, dp_audit.estimate, dp_audit.gate, dp_audit.accounting; "
            "bad = [m for m in ('torch', 'opacus', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mu_gdp_estimates_carry_their_validity_label(tmp_path, capsys):
    """Estimates whose null is μ-GDP (multi-run gdp, fdp with the gdp null) say so in their
    details and in `dp-audit estimate`'s output; (ε, δ) tests do not. Bug caught: the label
    dropped (the report and audit.json would then show a μ-GDP test as an (ε, δ) bound)."""
    from dp_audit.cli import main
    from dp_audit.estimate import MU_GDP_ONLY
    from dp_audit.io import save_npz

    rng = np.random.default_rng(0)
    member = rng.random(400) < 0.5
    scores = rng.normal(member * 1.0, 1.0)
    assert estimate_epsilon(scores, member, method="gdp").details["validity"] == MU_GDP_ONLY
    assert estimate_epsilon(scores, member, method="fdp", fdp_null="gdp").details["validity"] == MU_GDP_ONLY
    for method in ("fdp", "steinke", "clopper-pearson"):
        assert "validity" not in estimate_epsilon(scores, member, method=method).details
    save_npz(tmp_path / "s.npz", scores=scores, member=member)
    assert main(["estimate", "--scores", str(tmp_path / "s.npz"), "--method", "gdp"]) == 0
    assert MU_GDP_ONLY in capsys.readouterr().out
