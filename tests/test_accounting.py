"""Accounting cross-check against closed forms and between accountants."""

from __future__ import annotations

import math

import pytest

from dp_audit.accounting import cross_check, epsilon_from_ledger, laplace_pure_epsilon
from dp_audit.errors import UsageError
from dp_audit.estimate.gdp_math import gdp_epsilon


def gauss(sigma, q, steps):
    return {"events": [{"mechanism": "subsampled_gaussian", "component": "dpsgd", "noise_multiplier": sigma,
                        "sample_rate": q, "steps": steps}], "unaccounted": []}


@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_one_gaussian_step_is_mu_gdp(sigma):
    # No subsampling, one step: exactly μ-GDP with μ = 1/σ (Dong, Roth & Su 2022, Cor. 2.13;
    # Balle & Wang 2018). PLD and PRV are near-exact; RDP is an upper bound.
    exact = gdp_epsilon(1e-5, 1 / sigma)
    ledger = gauss(sigma, 1.0, 1)
    assert epsilon_from_ledger(ledger, delta=1e-5, accountant="pld") == pytest.approx(exact, rel=0.01)
    assert epsilon_from_ledger(ledger, delta=1e-5, accountant="prv") == pytest.approx(exact, rel=0.02)
    assert epsilon_from_ledger(ledger, delta=1e-5, accountant="rdp") >= exact * 0.999


def test_laplace_composition_closed_form():
    # Pure DP: q-subsampled ε0-DP composes to T·ln(1 + q(e^{ε0} − 1)) (Balle, Barthe & Gaboardi 2018).
    ledger = {"events": [{"mechanism": "subsampled_laplace", "epsilon_step": 0.5, "sample_rate": 0.1, "steps": 20}]}
    pure = epsilon_from_ledger(ledger, delta=1e-5, accountant="pure")
    assert pure == pytest.approx(20 * math.log(1 + 0.1 * (math.exp(0.5) - 1)), rel=1e-12)
    assert laplace_pure_epsilon(epsilon_step=1.0, sample_rate=1.0, steps=3) == pytest.approx(3.0)
    # with δ > 0 the PLD accountant can only be tighter than pure composition
    assert epsilon_from_ledger(ledger, delta=1e-5, accountant="pld") <= pure + 1e-6
    # one unsampled Laplace step with δ → 0 is ε0-DP: PLD at tiny δ approaches 0.5
    one = {"events": [{"mechanism": "subsampled_laplace", "epsilon_step": 0.5, "sample_rate": 1.0, "steps": 1}]}
    assert epsilon_from_ledger(one, delta=1e-12, accountant="pld") == pytest.approx(0.5, abs=0.01)
    assert epsilon_from_ledger(one, delta=1e-5, accountant="rdp") is None


def test_typical_dpsgd_accountants_agree_and_claim_is_consistent():
    ledger = gauss(1.1, 0.01, 1000)
    res = cross_check(ledger, claimed_epsilon=1.0, delta=1e-5)
    m = res["methods"]
    assert m["prv"] == pytest.approx(m["pld"], rel=0.03)
    assert m["pld"] * 0.99 <= m["rdp"] <= m["pld"] * 1.25
    res = cross_check(ledger, claimed_epsilon=m["rdp"], delta=1e-5)
    assert res["consistent"] and res["flags"] == []


def test_claim_too_low_and_unaccounted_are_flagged():
    ledger = gauss(1.1, 0.01, 1000)
    eps = epsilon_from_ledger(ledger, delta=1e-5, accountant="pld")
    res = cross_check(ledger, claimed_epsilon=eps / 3, delta=1e-5)  # e.g. epochs counted wrong
    assert not res["consistent"] and any("too low" in f for f in res["flags"])
    ledger["unaccounted"] = [{"component": "awp", "reason": "raw gradients"}]
    res = cross_check(ledger, claimed_epsilon=eps, delta=1e-5)
    assert not res["consistent"] and any(f.startswith("unaccounted: awp") for f in res["flags"])


def test_bad_ledgers_are_usage_errors():
    with pytest.raises(UsageError):
        cross_check({"events": [{"mechanism": "gaussian"}]}, claimed_epsilon=1, delta=1e-5)
    with pytest.raises(UsageError):
        cross_check({"events": [{"mechanism": "subsampled_gaussian", "sample_rate": 0.1}]}, claimed_epsilon=1,
                    delta=1e-5)
    with pytest.raises(UsageError):
        epsilon_from_ledger(gauss(1, 0.1, 1), delta=1e-5, accountant="moments")


def test_observed_mechanism_lower_bound_closed_form_and_order():
    """One unsampled Gaussian step with noise multiplier σ is exactly (1/σ)-GDP (Dong, Roth & Su
    2022): the optimistic PLD ε must sit at or just below the closed form; with subsampling it
    must not exceed the pessimistic PLD (the cross-check's) and stay within 5% of it."""
    from dp_audit.accounting import epsilon_from_ledger, observed_epsilon_lower
    from dp_audit.estimate.gdp_math import gdp_epsilon

    def ledger(sigma, q, steps):
        ev = {"mechanism": "subsampled_gaussian", "noise_multiplier": 9.9, "sample_rate": 0.5, "steps": 1,
              "observed": {"noise_multiplier": sigma, "sample_rate": q, "steps": steps}}
        return {"events": [ev]}

    for sigma in (0.8, 2.0):
        lo = observed_epsilon_lower(ledger(sigma, 1.0, 1), delta=1e-5)
        assert gdp_epsilon(1e-5, 1 / sigma) * 0.99 <= lo <= gdp_epsilon(1e-5, 1 / sigma) + 1e-9
    lo = observed_epsilon_lower(ledger(1.1, 0.05, 300), delta=1e-5)
    hi = epsilon_from_ledger({"events": [{"mechanism": "subsampled_gaussian", "noise_multiplier": 1.1,
                                          "sample_rate": 0.05, "steps": 300}]}, delta=1e-5, accountant="pld")
    assert 0.95 * hi <= lo <= hi  # optimistic (1e-4 grid) vs the pessimistic cross-check (1e-3): they bracket the truth
    assert observed_epsilon_lower(ledger(0.0, 0.05, 10), delta=1e-5) == float("inf")
    assert observed_epsilon_lower({"events": [{"mechanism": "subsampled_gaussian", "noise_multiplier": 1.0,
                                               "sample_rate": 0.1, "steps": 5}]}, delta=1e-5) is None
