"""DP-Flat and DP-ZO through the shared trainer path: run directories, ledgers, manifest notes,
the audit of a run, and the example configs (issue 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dp_audit.config import load_run_config
from dp_audit.errors import UsageError
from dp_audit.trainers.base import train_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PREFIX = {"tuning": "prefix", "num_virtual_tokens": 6}

VARIANTS = {
    "flat-paper": {"trainer": "dpflat", "model": PREFIX, "dpflat": {"awp_gamma": 1e-2}},
    "flat-private": {"trainer": "dpflat", "model": PREFIX,
                     "dpflat": {"awp_mode": "per-example", "sparse_mode": "public", "distill_mode": "public"}},
    "flat-dpsat": {"trainer": "dpflat", "model": PREFIX, "dpflat": {"awp_mode": "dpsat", "sparse": False,
                                                                    "distill_mode": "public"}},
    "flat-blackbox": {"trainer": "dpflat", "model": PREFIX,
                      "dpflat": {"blackbox": True, "awp": False, "sparse": False, "distill_epochs": 1}},
    "zo-gauss": {"trainer": "dpzo", "model": PREFIX},
    "zo-laplace-lora": {"trainer": "dpzo", "model": {"tuning": "lora"}, "dpzo": {"noise": "laplace"}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    from dp_audit.config import run_config_from_dict
    from tests.conftest import TINY, merge

    root = tmp_path_factory.mktemp("issue5")
    out = {}
    for name, sections in VARIANTS.items():
        data = merge(merge(TINY, {"model": {"cache_dir": str(cache_dir)}, "canaries": {"m": 20}}), sections)
        out[name] = train_run(run_config_from_dict(data), root / name, progress=False)
    return out


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_every_variant_writes_a_run_directory_with_its_ledger(runs):
    for name, run_dir in runs.items():
        ledger = json.loads((run_dir / "ledger.json").read_text())
        man = _manifest(run_dir)
        assert man["claim"]["unaccounted"] == ledger["unaccounted"], name
        mech = ledger["events"][0]["mechanism"]
        assert mech == ("subsampled_laplace" if name == "zo-laplace-lora" else "subsampled_gaussian"), name


def test_paper_mode_lists_every_unaccounted_part_private_modes_none(runs):
    comps = lambda n: [u["component"] for u in _manifest(runs[n])["claim"]["unaccounted"]]  # noqa: E731
    assert comps("flat-paper") == ["awp", "sparse", "distill", "distill-regulariser"]
    assert comps("flat-private") == []
    assert comps("flat-dpsat") == []
    assert comps("flat-blackbox") == ["distill"]
    assert comps("zo-gauss") == [] and comps("zo-laplace-lora") == []


def test_selected_layers_are_recorded_and_zero_in_the_saved_prefix(runs):
    from safetensors.torch import load_file

    for name in ("flat-paper", "flat-private"):
        notes = _manifest(runs[name])["notes"]["dpflat"]
        removed = notes["sparse"]["removed_layers"]
        assert len(removed) == 1
        rounds = notes["sparse"]["rounds"]
        assert len(rounds[0]) == 2 and all(len(c["losses"]) == 11 for c in rounds[0])
        weights = load_file(str(runs[name] / "model" / "adapter_model.safetensors"))
        (prefix,) = [v for k, v in weights.items() if "prompt_embeddings" in k or "prompt_encoder" in k]
        hidden = 32
        layer = removed[0]
        assert torch.count_nonzero(prefix[:, 2 * layer * hidden:(2 * layer + 2) * hidden]) == 0
        assert torch.count_nonzero(prefix) > 0
        assert notes["awp"]["applied"] > 0


def test_awp_notes_and_dpzo_notes(runs):
    awp = _manifest(runs["flat-paper"])["notes"]["dpflat"]["awp"]
    assert awp["mean_relative_norm"] == pytest.approx(1e-2, rel=1e-3)  # ‖v‖/‖P‖ = γ
    zo = _manifest(runs["zo-laplace-lora"])["notes"]["dpzo"]
    assert zo["noise"] == "laplace" and zo["noise_scale"] == pytest.approx(zo["clip"] / zo["epsilon_step"])


def test_dp_audit_run_audits_a_dpflat_run(runs):
    from dp_audit.cli import main

    assert main(["run", "--run", str(runs["flat-paper"])]) in (0, 1)
    audit = json.loads((runs["flat-paper"] / "audit.json").read_text())
    assert audit["model"]["trainer"] == "dpflat"
    assert any(f.startswith("unaccounted: awp") for f in audit["accounting"]["flags"])
    assert audit["accounting"]["consistent"] is False


def test_dpflat_config_checks(tiny_config):
    with pytest.raises(UsageError, match="model.tuning = 'prefix'"):
        tiny_config(trainer="dpflat")
    with pytest.raises(UsageError, match="cross-model flattening only"):
        tiny_config(trainer="dpflat", dpflat={"blackbox": True})
    with pytest.raises(UsageError, match="awp_mode"):
        tiny_config(trainer="dpflat", model={"tuning": "prefix"}, dpflat={"awp_mode": "sam"})
    with pytest.raises(UsageError, match="sparse_k"):
        tiny_config(trainer="dpflat", model={"tuning": "prefix"}, dpflat={"sparse_k": 2})


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("train-*.toml")), ids=lambda p: p.name)
def test_example_train_configs_load(path):
    cfg = load_run_config(path)
    assert cfg.trainer in ("nondp", "dpsgd", "dpflat", "dpzo")


@pytest.mark.parametrize("name", ["train-dpflat-private.toml", "train-dpzo-laplace.toml"])
def test_dp_audit_train_from_an_example_toml(name, tmp_path, cache_dir):
    """The example configs train through the CLI (sizes shrunk with --set to keep this fast)."""
    from dp_audit.cli import main

    sets = ["data.n_public=600", "data.n_train=300", "data.n_dev=100", "data.n_test=200", "data.vocab_size=200",
            "data.max_length=24", "model.hidden_size=32", "model.intermediate_size=64", "model.pretrain_epochs=2",
            f"model.cache_dir={cache_dir}", "canaries.m=20", "canaries.kind=mislabelled-random", "train.epochs=1",
            "model.num_virtual_tokens=6"]
    if "dpflat" in name:
        sets.append("dpflat.distill_epochs=1")
    args = ["train", "--config", str(EXAMPLES / name), "--out", str(tmp_path / "run"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    assert (tmp_path / "run" / "manifest.json").is_file()
