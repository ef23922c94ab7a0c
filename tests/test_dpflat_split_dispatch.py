"""DP-Flat's mode -> split choice is one set of functions (``teacher_data``, ``selection_data``,
``probe_data`` in trainers/dpflat.py) used by the trainer AND by the step-audit constructions (c)
and (d), so a construction's public control audits the data the trainer's public mode reads
(review rev6: before, the constructions chose their own splits). Each test names the bug it catches."""

from __future__ import annotations

import pytest
import torch

import dp_audit.trainers.dpflat as dpflat
import dp_audit.trainers.dpflat_sparse as dpflat_sparse
import dp_audit.trainers.nondp as nondp


class _Private:
    """A private split that fails the test when read."""

    def __getitem__(self, key):
        raise AssertionError("a public mode read a private split")

    def items(self):
        raise AssertionError("a public mode read a private split")


def _split(n: int, start: int = 0) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.arange(start, start + n).view(n, 1), "labels": torch.zeros(n, dtype=torch.long)}


def test_public_modes_read_only_the_public_split_and_paper_modes_the_private_ones():
    """Bug caught: a mode -> split function that reads a private split in public mode (e.g. the
    probe on ``prep.dev``): since the trainer and the constructions share it, only this test sees it."""
    public = _split(12)
    s = dpflat.Splits(train=_Private(), dev=_Private(), public=public)
    head, tail = dpflat.public_splits(s)
    assert dpflat.teacher_data(s, "public") is not None and torch.equal(dpflat.teacher_data(s, "public")["input_ids"],
                                                                       head["input_ids"])
    assert torch.equal(dpflat.selection_data(s, "public")["input_ids"], head["input_ids"])
    assert torch.equal(dpflat.probe_data(s, "public")["input_ids"], tail["input_ids"])
    train, dev = _split(5, 100), _split(3, 200)
    p = dpflat.Splits(train=train, dev=dev, public=public)
    assert dpflat.teacher_data(p, "paper") is train and dpflat.selection_data(p, "paper") is train
    assert dpflat.probe_data(p, "paper") is dev


class _Spy:
    """Wraps a mode -> split function; records (mode, returned batch)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, prep, mode):
        out = self.fn(prep, mode)
        self.calls.append((mode, out))
        return out


@pytest.fixture
def spies(monkeypatch):
    teacher, probe = _Spy(dpflat.teacher_data), _Spy(dpflat.probe_data)
    monkeypatch.setattr(dpflat, "teacher_data", teacher)
    monkeypatch.setattr(dpflat, "probe_data", probe)
    probed, fitted = [], []
    real_select, real_fit = dpflat_sparse.select_layers, nondp.fit_nonprivate

    def select(model, data, **kw):
        probed.append(data)
        return real_select(model, data, **kw)

    def fit(model, data, **kw):
        fitted.append((kw.get("desc", ""), data))
        return real_fit(model, data, **kw)

    monkeypatch.setattr(dpflat_sparse, "select_layers", select)
    monkeypatch.setattr(dpflat, "select_layers", select)
    monkeypatch.setattr(nondp, "fit_nonprivate", fit)
    monkeypatch.setattr(dpflat, "fit_nonprivate", fit)
    return {"teacher": teacher, "probe": probe, "probed": probed, "fitted": fitted}


def _used_exactly(spy, mode, used):
    """Every batch in ``used`` is one the spy returned for ``mode`` (the same object)."""
    returned = [out for m, out in spy.calls if m == mode]
    assert used and returned, (len(used), len(returned))
    assert all(any(u is r for r in returned) for u in used)


def test_the_public_constructions_use_the_trainers_split_functions(spies):
    """Bug caught: a construction choosing its own split for the public teacher or the public probe
    (a list it builds, ``side.public`` read directly): then "public mode is not refuted" says nothing
    about the trainer's public mode. Here the probe select_layers reads and the data the teacher is
    fitted on must be exactly what ``probe_data``/``teacher_data`` returned for mode "public"."""
    from dp_audit.stepaudit.constructions import build

    for name, spy, used in (("dpflat-sparse-public", "probe", "probed"), ("dpflat-distill-public", "teacher", "fitted")):
        cons = build(name, sigma=1.0)
        spies[used].clear()
        spies[spy].calls.clear()
        for side in (cons.d0, cons.d1):
            cons.step_fn(cons.state, side, torch.Generator().manual_seed(0))
        batches = spies[used] if used == "probed" else [d for desc, d in spies[used]]
        _used_exactly(spies[spy], "public", batches)
    # paper mode goes through the same functions, with mode "paper"
    spies["probe"].calls.clear()
    cons = build("dpflat-sparse-paper", sigma=1.0)
    assert {m for m, _ in spies["probe"].calls} == {"paper"}


def test_the_trainers_public_mode_uses_the_same_split_functions(spies, tiny_config, tmp_path):
    """Bug caught: the trainer hard-coding a split (e.g. ``probe = public_splits(prep)[1]`` or
    ``prep.dev``) instead of the shared functions: the constructions would then audit a split the
    trainer does not read. A tiny DP-Flat run with public sparse selection and public distillation:
    the probe and the teacher's data are exactly what the functions returned for mode "public"."""
    from dp_audit.trainers.base import train_run

    cfg = tiny_config(trainer="dpflat", model={"tuning": "prefix", "num_virtual_tokens": 6},
                      dpflat={"awp": False, "sparse_mode": "public", "distill_mode": "public", "distill_epochs": 1,
                              "sparse_reference_epochs": 1}, canaries={"m": 10})
    train_run(cfg, tmp_path / "run", progress=False)
    _used_exactly(spies["probe"], "public", spies["probed"])
    _used_exactly(spies["teacher"], "public", [d for desc, d in spies["fitted"] if "teacher" in desc])
