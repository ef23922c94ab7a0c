"""Contract tests of the probe registry: every entry runs on a tiny model with its defaults (or
fails with a one-line UsageError where the model cannot support it), configs reject typos, and
``dp_audit.landscapes`` never imports ``dp_audit.trainers`` (DESIGN.md §1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dp_audit.errors import UsageError
from dp_audit.io import dumps_json
from dp_audit.landscapes.evaluation import FunctionEvaluator
from dp_audit.landscapes.probes import PROBES, ProbeSpec, run_probes

SMALL = {"curve-gaussian": {"n_directions": 2, "etas": [0.0, 0.1]},
         "curve-filter": {"n_directions": 2, "etas": [0.0, 0.1]},
         "sharpness-rho": {"steps": 2},
         "dpflat-probe": {"alphas": [0.0, 1.0]},
         "hessian-top": {"max_iter": 3},
         "hessian-trace": {"max_iter": 3, "min_samples": 2},
         "prefix-layer-sharpness": {}}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.lin.weight.copy_(torch.randn(2, 3, generator=g))
            self.lin.bias.zero_()


X = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 2, (10,), generator=torch.Generator().manual_seed(2))


def losses(model, indices=None):
    x, y = (X, Y) if indices is None else (X[indices], Y[indices])
    logits = model.lin(x)
    return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits.argmax(-1) == y


def test_every_registered_probe_has_small_options():
    assert set(PROBES.names()) == set(SMALL)


@pytest.mark.parametrize("name", PROBES.names())
def test_each_probe_runs_or_refuses_clearly(name):
    m = Net()
    evs = {"train": FunctionEvaluator(losses, n=10), "dev": FunctionEvaluator(losses, n=10)}
    spec = ProbeSpec(name, SMALL[name])
    if name == "prefix-layer-sharpness":
        with pytest.raises(UsageError, match="PEFT prefix"):
            run_probes(m, evs, [spec], generator=torch.Generator().manual_seed(0), progress=False)
        return
    out = run_probes(m, evs, [spec], generator=torch.Generator().manual_seed(0), progress=False)
    json.loads(dumps_json(out))  # JSON-able
    section = PROBES.get(name).section
    assert out[section], out
    if section == "curves":
        assert {c["split"] for c in out["curves"]} == {"train", "dev"}


def test_spec_and_config_errors_are_one_line_usage_errors():
    m = Net()
    evs = {"dev": FunctionEvaluator(losses, n=10)}
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(UsageError, match="unknown probe 'nope'"):
        run_probes(m, evs, [ProbeSpec("nope")], generator=gen, progress=False)
    with pytest.raises(UsageError, match=r"unknown option\(s\) \['rhoo'\]"):
        run_probes(m, evs, [{"name": "sharpness-rho", "rhoo": 1}], generator=gen, progress=False)
    with pytest.raises(UsageError, match="no evaluator for split"):
        run_probes(m, evs, [ProbeSpec("hessian-top", splits=("train",))], generator=gen, progress=False)
    with pytest.raises(UsageError, match="labelled"):
        run_probes(m, evs, [ProbeSpec("hessian-top", {"max_iter": 1})] * 2, generator=gen, progress=False)
    with pytest.raises(UsageError, match="unknown params"):
        ProbeSpec.from_dict({"name": "hessian-top", "params": {"layer": [1]}})


def test_from_dict_reads_a_config_table():
    spec = ProbeSpec.from_dict({"name": "curve-filter", "etas": [0, 1], "splits": ["train"], "label": "f",
                                "params": {"include": ["lin"], "layers": [0]}})
    assert spec.options == {"etas": [0, 1]} and spec.splits == ("train",) and spec.label == "f"
    assert spec.params.include == ("lin",) and spec.params.layers == (0,)


def test_landscapes_never_imports_trainers():
    code = ("import sys, importlib, pkgutil, dp_audit.landscapes as L\n"
            "for m in pkgutil.iter_modules(L.__path__): importlib.import_module('dp_audit.landscapes.' + m.name)\n"
            "bad = [m for m in sys.modules if m.startswith('dp_audit.trainers')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
