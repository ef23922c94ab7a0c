"""Parameter selection, directions (filter normalisation, Li et al. 2018 §4), exact restoration
of the weights after every probe (also after an exception), and determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_audit.errors import UsageError
from dp_audit.landscapes import directions as D
from dp_audit.landscapes.evaluation import FunctionEvaluator
from dp_audit.landscapes.hessian import hessian_trace, top_eigenvalue
from dp_audit.landscapes.params import ParamGroup, as_selection, preserved, select_parameters, zero_group
from dp_audit.landscapes.sharpness import dpflat_probe, per_layer_sharpness, rho_sharpness
from dp_audit.landscapes.signal import choose_sign, loss_increase, perturbation_signal
from dp_audit.landscapes.surface import examples_per_point, loss_curve, loss_curves, loss_surface_2d


class Tiny(torch.nn.Module):
    """Two 'layers' with BERT-like names, a 1-D bias, and a frozen embedding."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(3, 4, generator=g), requires_grad=False)
        self.layer = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
        with torch.no_grad():
            for lin in self.layer:
                lin.weight.copy_(torch.randn(4, 4, generator=g))
                lin.bias.copy_(torch.randn(4, generator=g))
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        h = x @ self.emb
        for lin in self.layer:
            h = torch.tanh(self.drop(lin(h)))
        return h


X = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))


def tiny_losses(model, indices=None):
    x, y = (X, Y) if indices is None else (X[indices], Y[indices])
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits.argmax(-1) == y


EV = FunctionEvaluator(tiny_losses, n=16)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_select_parameters_filters():
    m = Tiny()
    names = [n for n, _ in select_parameters(m)]
    assert "emb" not in names and len(names) == 4
    assert [n for n, _ in select_parameters(m, layers=[1])] == ["layer.1.weight", "layer.1.bias"]
    assert [n for n, _ in select_parameters(m, include=[r"weight$"])] == ["layer.0.weight", "layer.1.weight"]
    assert [n for n, _ in select_parameters(m, trainable_only=False, include="emb")] == ["emb"]
    with pytest.raises(UsageError, match="no parameters selected"):
        select_parameters(m, layers=[7])
    with pytest.raises(UsageError, match="bad parameter pattern"):
        select_parameters(m, include=["("])


def test_filter_normalisation_gives_each_filter_the_weights_norm():
    m = Tiny()
    sel = as_selection(select_parameters(m))
    d = D.random_direction(sel, kind="filter", generator=torch.Generator().manual_seed(0))
    for e, t in zip(sel, d):
        if t.dim() == 2:
            np.testing.assert_allclose(t.norm(dim=1), e.param.detach().norm(dim=1), rtol=1e-5)
        else:
            assert torch.count_nonzero(t) == 0  # ignore_1d="zero": biases are not perturbed
    d2 = D.random_direction(sel, kind="filter", generator=torch.Generator().manual_seed(0), ignore_1d="weights")
    assert torch.equal(d2[1], sel[1].param.detach())
    u = D.random_direction(sel, kind="filter", generator=torch.Generator().manual_seed(0), unit_norm=True)
    assert D.norm(u) == pytest.approx(1.0, rel=1e-6)


def test_directions_respect_group_masks():
    m = Tiny()
    w = m.layer[0].weight
    grp = ParamGroup.from_slice("cols", "layer.0.weight", w, (slice(None), slice(1, 3)))
    sel = as_selection(grp)
    (d,) = D.gaussian_direction(sel, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(d[:, [0, 3]]) == 0 and torch.count_nonzero(d[:, 1:3]) == 8
    (f,) = D.filter_normalize([d], sel)
    np.testing.assert_allclose(f.norm(dim=1), w.detach()[:, 1:3].norm(dim=1), rtol=1e-5)


def _probes():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    return {
        "curve": lambda m, p, ev=EV: loss_curve(m, ev, p, etas=[-0.5, 0, 0.5], n_directions=3, generator=gen(),
                                                budget=None, progress=False),
        "curve-filter-sub": lambda m, p, ev=EV: loss_curve(m, ev, p, etas=[0, 0.5], n_directions=3, kind="filter",
                                                           generator=gen(), budget=1.5, progress=False),
        "surface": lambda m, p, ev=EV: loss_surface_2d(m, ev, p, etas_x=[-0.1, 0.1], generator=gen(),
                                                       max_examples=8, progress=False),
        "rho": lambda m, p, ev=EV: rho_sharpness(m, ev, p, rho=0.1, steps=2, generator=gen()),
        "dpflat": lambda m, p, ev=EV: dpflat_probe(m, ev, p, alphas=[0, 0.5, 1]),
        "top": lambda m, p, ev=EV: top_eigenvalue(m, ev, p, generator=gen(), max_iter=3),
        "trace": lambda m, p, ev=EV: hessian_trace(m, ev, p, generator=gen(), max_iter=3, min_samples=2),
        "signal": lambda m, p, ev=EV: perturbation_signal(m, ev, p, eta=0.1, n_directions=2, generator=gen()),
    }


@pytest.mark.parametrize("name", list(_probes()))
def test_weights_and_mode_restored_bit_exactly(name):
    m = Tiny()
    m.train()
    before = state(m)
    flags = [p.requires_grad for p in m.parameters()]
    _probes()[name](m, select_parameters(m, trainable_only=False))
    assert_same(before, state(m))
    assert m.training and flags == [p.requires_grad for p in m.parameters()]


@pytest.mark.parametrize("name", list(_probes()))
def test_weights_restored_after_an_exception(name):
    calls = {"n": 0}

    def flaky(model, indices=None):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise RuntimeError("boom")
        return tiny_losses(model, indices)

    m = Tiny()
    before = state(m)
    with pytest.raises(RuntimeError, match="boom"):
        _probes()[name](m, select_parameters(m), FunctionEvaluator(flaky, n=16))
    assert_same(before, state(m))
    assert m.training


def test_preserved_and_zero_group_restore_on_exception():
    m = Tiny()
    before = state(m)
    grp = ParamGroup.from_slice("row0", "layer.0.weight", m.layer[0].weight, 0)
    with pytest.raises(ValueError):
        with zero_group(grp):
            assert torch.count_nonzero(m.layer[0].weight[0]) == 0
            assert torch.equal(m.layer[0].weight[1:], before["layer.0.weight"][1:])
            raise ValueError
    assert_same(before, state(m))
    with pytest.raises(KeyError):
        with preserved(m, select_parameters(m)):
            with torch.no_grad():
                m.layer[1].bias.add_(1.0)
            raise KeyError
    assert_same(before, state(m))


def test_same_seed_same_results_and_different_seed_differs():
    m = Tiny()
    p = select_parameters(m)
    run = lambda seed: loss_curve(m, EV, p, etas=[0, 0.3], n_directions=4, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                  budget=1.5, progress=False)
    a, b, c = run(5), run(5), run(6)
    assert a == b and a.to_dict() == b.to_dict()
    assert a.loss_mean != c.loss_mean
    t = lambda seed: hessian_trace(m, EV, p, generator=torch.Generator().manual_seed(seed), max_iter=4, min_samples=4)  # noqa: E731
    assert t(1) == t(1) and t(1) != t(2)


def test_splits_share_directions_and_eval_mode_is_used():
    m = Tiny()
    m.train()  # dropout on: without eval mode the two identical splits would differ
    p = select_parameters(m)
    curves = loss_curves(m, {"a": EV, "b": EV}, p, etas=[0, 0.2], n_directions=3,
                         generator=torch.Generator().manual_seed(0), budget=None, progress=False)
    assert curves["a"].losses == curves["b"].losses
    assert curves["a"].acc_mean is not None and 0 <= curves["a"].acc_mean[0] <= 1


def test_budget_arithmetic_and_errors():
    assert examples_per_point(512, n_directions=8, n_points=10, budget=3.0, call_overhead=0) == 12
    assert examples_per_point(512, n_directions=8, n_points=10, budget=3.0) == 4  # 12.8 - 8 call overhead
    assert examples_per_point(10_000, n_directions=8, n_points=10, budget=2.5) == 179
    assert examples_per_point(512, n_directions=8, n_points=10, budget=None) == 512
    assert examples_per_point(10, n_directions=8, n_points=10, budget=1.0) == 1
    assert examples_per_point(10, n_directions=1, n_points=1, budget=100.0) == 10
    with pytest.raises(UsageError, match="budget"):
        examples_per_point(10, n_directions=1, n_points=1, budget=0.5)
    m = Tiny()
    with pytest.raises(UsageError, match="kind"):
        loss_curve(m, EV, select_parameters(m), kind="bogus", generator=torch.Generator(), progress=False)


def test_per_layer_modes_on_generic_groups():
    m = Tiny()
    groups = [ParamGroup.from_slice(f"row{i}", "layer.0.weight", m.layer[0].weight, i) for i in range(2)]
    before = state(m)
    r = per_layer_sharpness(m, EV, groups, alphas=[0, 0.5, 1], mode="restrict")
    assert r.groups == ("row0", "row1") and all(s >= 0 for s in r.sharpness)
    rm = per_layer_sharpness(m, EV, groups, alphas=[0, 0.5, 1], mode="remove")
    assert rm.curves[0].removed == "row0" and rm.flattest in ("row0", "row1")
    assert_same(before, state(m))


def test_signal_direction_and_closed_form():
    """ℓ_i = ½s_i‖w‖² at w = 0: the increase along d is ½s_iη²‖d‖², so the per-example signal is
    proportional to s_i with one common factor."""
    s = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))

    m = M()
    ev = FunctionEvaluator(lambda model: 0.5 * s * (model.w @ model.w))
    inc = loss_increase(m, ev, [("w", m.w)], eta=0.1, n_directions=3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(inc / inc[0], s.numpy() / 0.5, rtol=1e-10)
    flat = perturbation_signal(m, ev, [("w", m.w)], eta=0.1, n_directions=3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(flat, -inc)
    assert choose_sign(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == "flat"
    assert choose_sign(np.array([1.0, 2.0]), np.array([0.1, 0.2])) == "sharp"
    with pytest.raises(UsageError, match="sign"):
        perturbation_signal(m, ev, [("w", m.w)], eta=0.1, generator=torch.Generator(), sign="up")
