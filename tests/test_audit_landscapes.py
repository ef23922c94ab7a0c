"""The landscape stage of ``dp-audit run`` (issue 7): probes from the audit config, arrays and
summaries in the run directory, the landscape membership attack feeding the estimators and the
gate, and the report drawing the curves.

Two targets: a dp-audit run directory (the built-in task at the tests' tiny size, trained
non-privately for 10 epochs with 200 mislabelled canaries; its train and dev splits are rebuilt
from the manifest), and an external checkpoint (a tiny BERT classifier trained from a seeded
random init on its member canaries; canaries only). The landscape attack's sign is the audit
default (``sharp``), fixed on a pilot run with other seeds (docs/landscapes.md), so the AUC check
on the run directory can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_audit.canaries import Canary, write_canaries
from dp_audit.cli import main
from dp_audit.config import AuditConfig, from_mapping
from dp_audit.errors import UsageError

M, WORDS, STEPS = 80, 8, 120
PROBES = {"attacks": ["loss", "landscape"], "probes": ["curve-gaussian", "rho"], "formats": [],
          "probe": {"curve-gaussian": {"n_directions": 3, "etas": [-0.02, 0.0, 0.02], "budget": 0,
                                       "params": {"include": ["classifier"]}},
                    "rho": {"name": "sharpness-rho", "steps": 2, "splits": ["member"]}},
          "landscape": {"max_examples": 30, "attack_directions": 4}}


def _texts(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    return [" ".join(rng.choice(vocab, size=WORDS)) for _ in range(n)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A memorising classifier (save_pretrained + tokenizer) and its canaries file."""
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.hf_compat import quiet_transformers
    from dp_audit.trainers.tokenizer import train_tokenizer

    quiet_transformers()
    root = tmp_path_factory.mktemp("landscape-ckpt")
    rng = np.random.default_rng(20261201)
    vocab = [f"w{i}" for i in range(300)]
    texts = _texts(rng, vocab, M)
    labels = rng.integers(0, 2, M)
    member = rng.random(M) < 0.5
    cans = [Canary(id=f"c{i}", text=t, label=int(y), member=bool(m))
            for i, (t, y, m) in enumerate(zip(texts, labels, member))]
    write_canaries(root / "canaries.jsonl", cans)
    tok = train_tokenizer(_texts(rng, vocab, 400) + texts, vocab_size=320, max_length=16)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    with torch.random.fork_rng():  # HF initialises from the global RNG: re-initialised below
        model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.05, generator=g)
    enc = tok([t for t, m in zip(texts, member) if m], padding=True, return_tensors="pt")
    y = torch.as_tensor(labels[member], dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    model.config.hidden_dropout_prob = 0.0
    for _ in range(STEPS):
        opt.zero_grad()
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=y)
        out.loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def audit_external(checkpoint: Path, out: Path, data: dict) -> dict:
    from dp_audit.audit import run_audit, target_from_checkpoint

    target = target_from_checkpoint(model=checkpoint / "model", canaries=checkpoint / "canaries.jsonl", epsilon=1.0,
                                    delta=1e-5, out=out, overwrite=True)
    return run_audit(target, from_mapping(AuditConfig, data), progress=False, render=False)


@pytest.fixture(scope="module")
def audited(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape-audit") / "run"
    return out, audit_external(checkpoint, out, PROBES)


@pytest.fixture(scope="module")
def run_dir(tiny_config, tmp_path_factory):
    """A dp-audit run directory: non-private, 10 epochs, 200 canaries (seeds unlike the pilot's)."""
    from dp_audit.trainers.base import train_run

    cfg = tiny_config(trainer="nondp", canaries={"m": 200, "seed": 11}, train={"epochs": 10, "seed": 5})
    return train_run(cfg, tmp_path_factory.mktemp("landscape-run") / "nondp", progress=False)


@pytest.fixture(scope="module")
def tiny_config(cache_dir):  # module-scoped copy of conftest's fixture
    from dp_audit.config import run_config_from_dict
    from tests.conftest import TINY, merge

    return lambda **sections: run_config_from_dict(merge(merge(TINY, {"model": {"cache_dir": str(cache_dir)}}),
                                                         sections))


def test_run_directory_landscape_attack_scores_members_higher(run_dir):
    from dp_audit.audit import run_audit, target_from_run

    cfg = from_mapping(AuditConfig, {"attacks": ["loss", "landscape"], "probes": ["curve-gaussian"], "formats": [],
                                     "probe": {"curve-gaussian": {"n_directions": 2, "etas": [0.0, 0.01],
                                                                  "params": {"include": ["classifier"]}}},
                                     "landscape": {"max_examples": 100}})
    audit = run_audit(target_from_run(run_dir), cfg, progress=False, render=False)
    by = {a["name"]: a for a in audit["attacks"]}
    lm = by["landscape"]
    assert lm["auc"] > 0.6 and lm["auc_ci"][0] > 0.5, (lm["auc"], lm["auc_ci"])  # clearly above chance
    land = audit["landscapes"]
    assert {c["split"] for c in land["curves"]} == {"train", "member", "nonmember", "dev"}
    assert land["data"]["train"] == {"n": 100, "n_available": 300,
                                     "source": "private training examples (members; no canaries)"}
    assert land["signal"]["sign"] == "sharp" and "train_vs_dev_auc" in land["signal"]
    # the rebuilt data must be the trained-on data: a manifest whose config changed is refused
    from dp_audit.audit_landscapes import _splits
    from dp_audit.errors import IntegrityError
    import dataclasses

    target = target_from_run(run_dir)
    bad = dict(target.manifest, config={**target.manifest["config"],
                                        "data": {**target.manifest["config"]["data"], "seed": 99}})
    with pytest.raises(IntegrityError, match="data_fingerprint"):
        _splits(dataclasses.replace(target, manifest=bad), cfg)


def test_landscape_attack_enters_the_gate(audited):
    out, audit = audited
    by = {a["name"]: a for a in audit["attacks"]}
    assert set(by) == {"loss", "landscape"}
    lm = by["landscape"]
    assert lm["threat_model"] == "white-box" and audit["threat_model"] == "white-box"
    assert lm["details"]["sign"] == "sharp" and lm["details"]["sign_source"].startswith("fixed")
    # the gate reloads the hashed scores file and tests it like any other attack
    from dp_audit.gate import GatePolicy, evaluate_gate
    from dp_audit.io import load_scores
    from dp_audit.manifest import load_manifest

    manifest = load_manifest(out)
    for rel in ("scores/landscape.npz", "landscapes/signal.npz", "landscapes/curves.npz", "audit.json"):
        assert rel in manifest["artifacts"], rel
    scores, member = load_scores(out / "scores/landscape.npz")
    assert scores.size == M and member.sum() == audit["canaries"]["n_members"]
    gate = evaluate_gate(out, GatePolicy(attacks=("landscape",), estimators=("steinke",)))
    assert [e.attack for e in gate.estimates] == ["landscape"]
    assert {e["attack"] for e in audit["estimates"]} == {"loss", "landscape"}  # run_audit gated both


def test_landscapes_object_follows_formats_md(audited):
    out, audit = audited
    land = audit["landscapes"]
    assert {c["split"] for c in land["curves"]} == {"member", "nonmember"}  # external model: canaries only
    for c in land["curves"]:
        assert len(c["eta"]) == len(c["loss_mean"]) == len(c["loss_se"]) == 3 and c["label"] == "curve-gaussian"
        n = min(30, land["data"][c["split"]]["n_available"])
        assert c["n_examples"] == n and c["examples_per_point"] == n  # budget 0: full evaluation
    assert set(land["sharpness"]["rho"]) == {"member"}
    assert land["data"]["member"]["n"] == 30 and land["data"]["member"]["n_available"] == audit["canaries"]["n_members"]
    assert set(land["seeds"]) == {"subsample", "probes", "attack"}
    from dp_audit.io import load_npz

    z = load_npz(out / "landscapes/curves.npz")
    c0 = land["curves"][0]
    np.testing.assert_allclose(z[f"curve-gaussian/{c0['split']}/losses"], c0["losses"])
    sig = load_npz(out / "landscapes/signal.npz")
    np.testing.assert_allclose(sig["canaries/score"], load_npz(out / "scores/landscape.npz")["scores"])


def test_landscape_stage_is_deterministic(audited, checkpoint, tmp_path):
    out, audit = audited
    again = audit_external(checkpoint, tmp_path / "again", PROBES)
    from dp_audit.io import load_npz

    a, b = load_npz(out / "scores/landscape.npz"), load_npz(tmp_path / "again" / "scores/landscape.npz")
    np.testing.assert_array_equal(a["scores"], b["scores"])
    strip = lambda land: {k: v for k, v in land.items() if k != "files"}  # noqa: E731
    assert json.dumps(strip(again["landscapes"])) == json.dumps(strip(audit["landscapes"]))
    different = audit_external(checkpoint, tmp_path / "seed1", {**PROBES, "seed": 1})
    assert different["landscapes"]["seeds"] != audit["landscapes"]["seeds"]


@pytest.mark.parametrize("data, match", [
    ({"probes": ["curve-gaussian"], "probe": {"curve-gaussian": {"n_dirs": 2}}}, r"probe\.curve-gaussian\.n_dirs"),
    ({"probes": ["curve-gaussian"], "probe": {"curve-gaussian": {"n_directions": "8"}}},
     r"probe\.curve-gaussian\.n_directions must be an integer"),
    ({"probes": [], "probe": {"hessian-top": {}}}, r"probe\.hessian-top is configured but"),
    ({"probes": ["nope"]}, r"unknown probe 'nope'"),
    ({"probes": ["x"], "probe": {"x": {"name": "sharpness-rho", "params": {"layer": [0]}}}},
     r"probe\.x\.params\.layer"),
    ({"landscape": {"max_exampels": 3}}, r"landscape\.max_exampels"),
    ({"landscape": {"attack_sign": "up"}}, r"landscape\.attack_sign"),
    ({"landscape": {"splits": ["test"]}}, r"landscape\.splits"),
])
def test_config_errors_name_the_key(data, match):
    with pytest.raises(UsageError, match=match):
        from_mapping(AuditConfig, data)


def test_cli_reads_probe_tables_and_rejects_unavailable_splits(checkpoint, tmp_path, capsys):
    toml = tmp_path / "audit.toml"
    toml.write_text('attacks = ["loss"]\nprobes = ["curve-filter"]\nformats = ["html"]\n\n'
                    '[probe.curve-filter]\nn_directions = 2\netas = [0.0, 0.1]\n\n'
                    '[landscape]\nmax_examples = 10\n')
    args = ["run", "--model", str(checkpoint / "model"), "--canaries", str(checkpoint / "canaries.jsonl"),
            "--epsilon", "1", "--delta", "1e-5", "--quiet", "--config", str(toml)]
    assert main(args + ["--out", str(tmp_path / "ok")]) == 0
    audit = json.loads((tmp_path / "ok" / "audit.json").read_text())
    assert [c["probe"] for c in audit["landscapes"]["curves"]] == ["filter", "filter"]
    assert "Loss landscape" in (tmp_path / "ok" / "report.html").read_text()
    capsys.readouterr()
    code = main(args + ["--out", str(tmp_path / "bad"), "--set", 'landscape.splits=["dev"]'])
    err = capsys.readouterr().err
    assert code == 2 and "landscape.splits" in err and len(err.strip().splitlines()) == 1, err


def test_report_draws_the_stage_output_and_comparison_overlays_runs(audited, checkpoint, tmp_path):
    from dp_audit.reports import render_comparison, render_run
    from dp_audit.reports.figures import comparison_figures, report_figures
    from dp_audit.reports.viewmodel import build_comparison, build_view

    out, _ = audited
    view = build_view(out)
    assert {c.split for c in view.landscapes.curves} == {"member", "nonmember"}
    assert all(c.loss_se is not None and c.name == "curve-gaussian" for c in view.landscapes.curves)
    assert any(k.startswith("signal.") for k, _ in view.landscapes.summary)
    figs = {f.key: f for f in report_figures(view)}
    ax = figs["landscape"].figure.axes[0]
    legend = figs["landscape"].figure.legends[0]
    assert {t.get_text() for t in legend.get_texts()} == {"member", "nonmember"}  # the panel names the probe
    assert len(ax.collections) == 2  # one ±1 SE band per split
    html = render_run(out, formats=("html",), out_dir=tmp_path / "one")["html"].read_text()
    assert 'id="landscapes"' in html and "<svg" in html.split('id="landscapes"')[1].split("</section>")[0]
    # a second run (other seed) overlaid in a comparison report
    other = tmp_path / "other"
    audit_external(checkpoint, other, {**PROBES, "seed": 5})
    cmp = build_comparison([out, other])
    spec = {f.key: f for f in comparison_figures(cmp.views)}["landscape"]
    labels = {t.get_text() for t in spec.figure.legends[0].get_texts()}
    assert labels == {"run: member", "run: nonmember", "other: member", "other: nonmember"}
    page = render_comparison([out, other], out_dir=tmp_path / "cmp", formats=("html",))["html"].read_text()
    assert page.count("<figure") == 2
