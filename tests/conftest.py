"""Shared fixtures. Tests never touch the network (HF_HUB_OFFLINE=1) and use tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

TINY = {
    "data": {"n_public": 600, "n_train": 300, "n_dev": 100, "n_test": 200, "vocab_size": 200, "max_length": 24},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "pretrain_epochs": 2},
    "canaries": {"m": 40},
    "train": {"epochs": 1, "batch_size": 32, "progress": False},
    # tests compare runs and rely on fixed seeds: the noise is seeded from train.seed (recorded in
    # the ledger as replayable). Tests of the default (OS-entropy noise) set it back to false.
    "privacy": {"reproducible_noise": True},
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One backbone cache for the whole session (pretraining is the slow part)."""
    return tmp_path_factory.mktemp("backbone-cache")


def merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


@pytest.fixture
def tiny_config(cache_dir):
    """Build a tiny RunConfig: ``tiny_config(trainer="dpsgd", privacy={...})``."""
    from dp_audit.config import run_config_from_dict

    def make(**sections):
        data = merge(TINY, {"model": {"cache_dir": str(cache_dir)}})
        return run_config_from_dict(merge(data, sections))

    return make
