"""Model directories are read safely (issue 13 items 1, 11, 12): pickle weight files are refused
unless --allow-pickle (then read with torch weights_only=True), symlinks may not leave the model
directory, and a config.json that is not an object is a usage error (was AttributeError, exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dp_audit.attacks.loading import check_model_dir, load_hf_model
from dp_audit.cli import main
from dp_audit.errors import UsageError
from tests.test_hf_checkpoint_audit import bert, canaries, write_jsonl
from tests.test_attack_contracts import rare_tokenizer


@pytest.fixture(scope="module")
def pickle_model(tmp_path_factory) -> Path:
    """A save_pretrained directory whose weights were converted to pytorch_model.bin (pickle)."""
    from safetensors.torch import load_file

    d = tmp_path_factory.mktemp("m") / "model"
    tok = rare_tokenizer(8)
    model = bert(tok)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    return d


def test_pickle_weights_refused_by_default(pickle_model):
    """Bug caught: a pickle pytorch_model.bin was loaded (only torch's weights_only default stood
    between a malicious file and code execution)."""
    with pytest.raises(UsageError, match="pickle format.*--allow-pickle"):
        load_hf_model(pickle_model)


def test_pickle_weights_load_with_allow_pickle(pickle_model):
    """Bug caught: --allow-pickle not threaded to the loader (would still refuse or fail)."""
    model, _, info = load_hf_model(pickle_model, allow_pickle=True)
    assert info["kind"] == "classifier" and sum(p.numel() for p in model.parameters()) > 0


def test_cli_refuses_pickle_before_writing_anything(pickle_model, tmp_path, capsys):
    """Bug caught: the refusal came after --out was created (a half-made run directory)."""
    cans = write_jsonl(tmp_path / "c.jsonl", canaries(8))
    out = tmp_path / "out"
    code = main(["run", "--model", str(pickle_model), "--canaries", str(cans), "--epsilon", "1",
                 "--delta", "1e-5", "--out", str(out), "--quiet", "--no-report"])
    assert code == 2 and not out.exists()
    assert "--allow-pickle" in capsys.readouterr().err


def test_symlink_leaving_the_model_dir_is_refused(tmp_path):
    """Bug caught: a symlink in the model directory pointing elsewhere was read and hashed."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    secret = tmp_path / "elsewhere.safetensors"
    secret.write_bytes(b"x")
    (d / "model.safetensors").symlink_to(secret)
    with pytest.raises(UsageError, match="symlink that leaves"):
        check_model_dir(d)


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "3"])
def test_config_json_not_an_object_is_usage(tmp_path, payload):
    """Bug caught: config.json holding a JSON list crashed with AttributeError (exit 1)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(payload)
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="not a JSON object"):
        load_hf_model(d)
