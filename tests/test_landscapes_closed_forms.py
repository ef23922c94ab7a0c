"""Landscape probes against closed forms on a quadratic loss L(w) = ½ wᵀAw (issue 7).

Reference values are exact algebra, not fitted numbers:
- Hessian = A: top eigenvalue and trace from numpy.linalg.eigvalsh / trace;
- Gaussian d ~ N(0, I_p) at w = 0: L(ηd) = ½η²·dᵀAd, E = ½η²·tr(A), Var = ¼η⁴·2·tr(A²)
  (variance of a Gaussian quadratic form, e.g. Mathai & Provost 1992, Thm 3.2b.2);
- Hutchinson with Rademacher v: E[vᵀAv] = tr(A), Var = 2·Σ_{i≠j} A_ij² (Hutchinson 1990);
- ρ-ball at w = 0: max_{‖δ‖≤ρ} ½δᵀAδ = ½ρ²·λ_max(A) (Rayleigh quotient);
- DP-Flat probe at w0: L(w0 + α·ĝ) = L(w0) + α‖g‖ + ½α²·ĝᵀAĝ with g = A·w0, ĝ = g/‖g‖.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dp_audit.landscapes.evaluation import FunctionEvaluator
from dp_audit.landscapes.hessian import hessian_trace, top_eigenvalue
from dp_audit.landscapes.sharpness import dpflat_probe, rho_sharpness
from dp_audit.landscapes.surface import loss_curve

P = 6


class Quadratic(torch.nn.Module):
    def __init__(self, A: np.ndarray, w0: np.ndarray) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        self.register_buffer("A", torch.tensor(A, dtype=torch.float64))


def quad_loss(model: Quadratic) -> torch.Tensor:
    return (0.5 * model.w @ model.A @ model.w).reshape(1)


def spd(eigs, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    return (q * np.asarray(eigs)) @ q.T


EIGS = [5.0, 2.0, 1.0, 0.5, 0.1, 0.05]


@pytest.fixture
def quad():
    A = spd(EIGS, 0)
    return A, Quadratic(A, np.zeros(P)), FunctionEvaluator(quad_loss)


def params(model):
    return [("w", model.w)]


def test_top_eigenvalue_matches_eigvalsh():
    A = spd(EIGS, 1)
    model = Quadratic(A, np.random.default_rng(2).normal(size=P))  # Hessian is A everywhere
    res = top_eigenvalue(model, FunctionEvaluator(quad_loss), params(model), generator=torch.Generator().manual_seed(0),
                         max_iter=500, tol=1e-10)
    assert res.converged and res.iterations < 500
    assert res.value == pytest.approx(np.linalg.eigvalsh(A).max(), rel=1e-6)


def test_top_eigenvalue_reports_non_convergence():
    A = spd([1.0, 0.999, 0.5, 0.2, 0.1, 0.05], 3)  # tiny eigengap: 3 iterations cannot converge at tol 1e-12
    model = Quadratic(A, np.zeros(P))
    res = top_eigenvalue(model, FunctionEvaluator(quad_loss), params(model), generator=torch.Generator().manual_seed(0),
                         max_iter=3, tol=1e-12)
    assert not res.converged and res.iterations == 3


def test_hutchinson_trace_matches_within_known_variance():
    A = spd(EIGS, 4)
    model = Quadratic(A, np.zeros(P))
    n = 1500
    res = hessian_trace(model, FunctionEvaluator(quad_loss), params(model), generator=torch.Generator().manual_seed(5),
                        max_iter=n, tol=1e-15, min_samples=n)
    true_sd = math.sqrt(2 * (np.sum(A**2) - np.sum(np.diag(A) ** 2)))
    assert res.n_samples == n and not res.converged
    assert abs(res.value - np.trace(A)) < 4 * true_sd / math.sqrt(n)
    assert res.se == pytest.approx(true_sd / math.sqrt(n), rel=0.15)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    A = np.diag(EIGS)
    model = Quadratic(A, np.zeros(P))
    res = hessian_trace(model, FunctionEvaluator(quad_loss), params(model), generator=torch.Generator().manual_seed(0),
                        max_iter=50, tol=1e-6, min_samples=5)
    assert res.converged and res.n_samples == 5
    assert res.value == pytest.approx(sum(EIGS), rel=1e-12) and res.se == pytest.approx(0.0, abs=1e-12)


def test_gaussian_curve_mean_increase_is_half_eta2_trace(quad):
    A, model, ev = quad
    K = 400
    etas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    c = loss_curve(model, ev, params(model), etas=etas, n_directions=K, generator=torch.Generator().manual_seed(0),
                   budget=None, progress=False)
    for eta, mean, se in zip(c.eta, c.loss_mean, c.loss_se):
        expect = 0.5 * eta**2 * np.trace(A)
        true_se = 0.5 * eta**2 * math.sqrt(2 * np.trace(A @ A) / K)
        assert abs(mean - expect) <= 4 * true_se + 1e-12, (eta, mean, expect)
        if eta != 0:
            assert se == pytest.approx(true_se, rel=0.3)  # the reported SE estimates the true one
    assert c.loss_mean[2] == 0.0 and c.loss_se[2] == 0.0
    assert c.acc_mean is None and len(c.losses) == K


def test_subsampled_curve_is_unbiased_and_its_se_includes_subsampling():
    """Per-example quadratics ℓ_i = ½s_i·wᵀBw with very different s_i: the target at w = 0 is
    ½η²·mean(s)·tr(B). With m = 5 examples per direction the estimate must stay unbiased, and the
    reported SE² must match the estimate's true variance over independent repetitions
    (E[se²] = Var[L̂] because the K per-direction estimates are i.i.d.). An SE that left out the
    subsampling noise, or a subsample shared by all directions, breaks the second check."""
    rng = np.random.default_rng(7)
    n, p, K = 200, 4, 8
    scales = torch.tensor(rng.gamma(1.0, 1.0, size=n))
    base = torch.tensor(spd([3.0, 1.0, 0.5, 0.2], 8))

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(p, dtype=torch.float64))

    def per_example(model, indices=None):
        s = scales if indices is None else scales[indices]
        return 0.5 * s * (model.w @ base @ model.w)

    model, ev = M(), FunctionEvaluator(per_example, n=n)
    target = 0.5 * float(scales.mean()) * float(torch.trace(base))
    gen = torch.Generator().manual_seed(11)
    est, se2 = [], []
    for _ in range(1500):
        c = loss_curve(model, ev, [("w", model.w)], etas=[0.0, 1.0], n_directions=K, generator=gen, budget=1.2,
                       call_overhead=0.0, progress=False)
        est.append(c.loss_mean[1])
        se2.append(c.loss_se[1] ** 2)
    assert c.examples_per_point == 5  # ⌊0.2·200/8⌋
    est = np.asarray(est)
    assert abs(est.mean() - target) < 4 * est.std() / math.sqrt(est.size)
    assert 0.8 < np.mean(se2) / est.var() < 1.25, np.mean(se2) / est.var()


def test_rho_sharpness_at_minimum_is_half_rho2_lambda_max(quad):
    A, model, ev = quad
    rho = 0.3
    res = rho_sharpness(model, ev, params(model), rho=rho, steps=60, generator=torch.Generator().manual_seed(0))
    expect = 0.5 * rho**2 * np.linalg.eigvalsh(A).max()
    assert res.loss0 == 0.0
    assert res.sharpness == pytest.approx(expect, rel=1e-4)
    assert res.sharpness <= expect * (1 + 1e-9) and res.delta_norm <= rho * (1 + 1e-9)


def test_rho_sharpness_few_steps_is_a_lower_bound(quad):
    A, model, ev = quad
    res = rho_sharpness(model, ev, params(model), rho=0.3, steps=2, generator=torch.Generator().manual_seed(0))
    assert 0 < res.sharpness <= 0.5 * 0.09 * np.linalg.eigvalsh(A).max() * (1 + 1e-9)


@pytest.mark.parametrize("scale,radius", [("unit", 1.0), ("weight", 0.5)])
def test_dpflat_probe_matches_taylor_expansion(scale, radius):
    A = spd(EIGS, 9)
    w0 = np.random.default_rng(10).normal(size=P)
    model = Quadratic(A, w0)
    alphas = np.linspace(0, 1, 11)
    res = dpflat_probe(model, FunctionEvaluator(quad_loss), params(model), alphas=alphas, scale=scale, radius=radius)
    g = A @ w0
    gh = g / np.linalg.norm(g)
    r = radius * (np.linalg.norm(w0) if scale == "weight" else 1.0)
    expect = [0.5 * w0 @ A @ w0 + a * r * np.linalg.norm(g) + 0.5 * (a * r) ** 2 * gh @ A @ gh for a in alphas]
    np.testing.assert_allclose(res.losses, expect, rtol=1e-10)
    assert res.radius == pytest.approx(r) and res.grad_norm == pytest.approx(np.linalg.norm(g))
    assert res.sharpness == pytest.approx(max(expect) - expect[0])
