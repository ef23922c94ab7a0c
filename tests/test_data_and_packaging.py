import subprocess
import sys

import numpy as np
import pytest

from dp_audit.config import DataConfig


def test_task_is_deterministic_and_splits_disjoint():
    from dp_audit.trainers.data import make_task

    cfg = DataConfig(n_public=300, n_train=200, n_dev=50, n_test=50, vocab_size=100)
    a, b = make_task(cfg), make_task(cfg)
    assert a == b
    texts = [set(a.split(s).texts) for s in ("public", "train", "dev", "test")]
    assert sum(len(t) for t in texts) == len(set().union(*texts))
    assert 0.3 < np.mean(a.train.labels) < 0.7
    c = make_task(DataConfig(n_public=300, n_train=200, n_dev=50, n_test=50, vocab_size=100, seed=1))
    assert c.fingerprint != a.fingerprint


def test_domain_shift_flips_polarity_of_some_words():
    from dp_audit.trainers.data import make_task

    t0 = make_task(DataConfig(n_public=10, n_train=10, n_dev=10, n_test=10, vocab_size=400, domain_shift=0.0))
    t1 = make_task(DataConfig(n_public=10, n_train=10, n_dev=10, n_test=10, vocab_size=400, domain_shift=0.25))
    p0, p1 = np.array(t0.polarity), np.array(t1.polarity)
    polar = p0 != 0
    assert (p0 == 0).sum() == (p1 == 0).sum()
    flipped = np.mean(p0[polar] != p1[polar])
    assert 0.15 < flipped < 0.35


@pytest.mark.parametrize("bare", ["attacks", "landscapes", "trainers", "reports"])
def test_subpackages_refuse_bare_import(bare, tmp_path):
    import dp_audit  # noqa: F401
    import importlib

    mod = importlib.import_module(f"dp_audit.{bare}")
    root = __import__("pathlib").Path(mod.__file__).parent.parent
    r = subprocess.run([sys.executable, "-c", f"import {bare}"], cwd=root, capture_output=True, text=True)
    assert r.returncode != 0 and f"dp_audit.{bare}" in r.stderr


def test_core_does_not_import_torch():
    code = ("import sys, dp_audit, dp_audit.config, dp_audit.manifest, dp_audit.io, dp_audit.records, "
            "dp_audit.canaries, dp_audit.cli; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
