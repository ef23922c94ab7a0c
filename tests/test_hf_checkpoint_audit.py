"""Auditing checkpoints that plain ``transformers`` / ``peft`` code wrote (issue 6), through the CLI:
``dp-audit run --model DIR --canaries F --epsilon E --delta D --out OUT`` then ``dp-audit gate``.

A tiny BERT classifier (built from a config, trained with plain torch on the member canaries),
a LoRA adapter on a saved base (``--base``), and a tiny GPT-2 trained on member secret canaries,
audited with ``attacks = ["all"]`` and candidate secrets so that the exposure bound runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_audit.cli import main
from tests.test_attack_contracts import rare_tokenizer
from tests.test_attacks_tiny_models import SPECIAL, WORDS, make_tokenizer, seeded_init_, tiny_gpt2
from tests.test_end_to_end import one_line_error

M = 120


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def canaries(m: int = M, seed: int = 0) -> list[dict]:
    """Mislabelled rare-token canaries, membership Bernoulli(1/2) from a seeded generator."""
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    return [{"id": f"c{i:03d}", "text": f"u{i} " + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), size=4)),
             "label": int(rng.integers(0, 2)), "member": bool(member[i])} for i in range(m)]


def bert(tok, *, seed: int = 1):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2, pad_token_id=0,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return seeded_init_(BertForSequenceClassification(cfg), seed=seed)


def fit(model, tok, rows, *, steps: int, lr: float):
    members = [r for r in rows if r["member"]]
    enc = tok([r["text"] for r in members], padding=True, return_tensors="pt")
    y = torch.tensor([r["label"] for r in members])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    rows = canaries()
    tok = rare_tokenizer(M)
    model = fit(bert(tok), tok, rows, steps=60, lr=3e-3)
    model.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    write_jsonl(root / "canaries.jsonl", rows)

    # PEFT LoRA adapter on a saved base (the base's weights are frozen; the head is trained)
    from peft import LoraConfig, TaskType, get_peft_model

    base = bert(tok, seed=2)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    lora = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                           target_modules=["query", "value"], lora_dropout=0.0))
    fit(lora, tok, rows, steps=40, lr=1e-2).save_pretrained(root / "adapter")

    # causal LM on member secret canaries, with candidate secrets drawn like the secrets
    from dp_audit.lm_canaries import make_secret_canaries, secret_candidates

    secrets = make_secret_canaries(32, rng=np.random.default_rng(3), template="my pin is {secret}")
    write_jsonl(root / "secrets.jsonl", secrets)
    (root / "candidates.txt").write_text("\n".join(
        secret_candidates(4095, rng=np.random.default_rng(4), template="my pin is {secret}")) + "\n")
    lm_tok = make_tokenizer(bert_style=False)
    lm = tiny_gpt2(seed=0).train()
    ids = torch.as_tensor([lm_tok(s["text"])["input_ids"] for s in secrets if s["member"]])
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    for _ in range(150):
        loss = lm(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval().save_pretrained(root / "gpt2")
    lm_tok.save_pretrained(root / "gpt2")
    return root


def run_cli(root: Path, model: str, out: str, eps: float, *extra: str, canaries_file: str = "canaries.jsonl") -> int:
    return main(["run", "--model", str(root / model), "--canaries", str(root / canaries_file), "--epsilon", str(eps),
                 "--delta", "1e-5", "--out", str(root / out), "--quiet", "--no-report", "--overwrite", *extra])


def test_plain_transformers_classifier_false_claim_is_refuted(checkpoints):
    assert run_cli(checkpoints, "bert", "audit-bert", 0.5) == 0
    audit = json.loads((checkpoints / "audit-bert" / "audit.json").read_text())
    assert audit["source"] == "external" and audit["model"]["kind"] == "classifier"
    assert audit["attacks"][0]["name"] == "loss" and audit["attacks"][0]["auc"] > 0.8
    assert audit["references"] is None
    assert main(["gate", "--run", str(checkpoints / "audit-bert")]) == 1


def test_plain_transformers_classifier_true_claim_passes(checkpoints):
    assert run_cli(checkpoints, "bert", "audit-bert-big", 50.0) == 0
    assert main(["gate", "--run", str(checkpoints / "audit-bert-big")]) == 0


def test_peft_adapter_with_base(checkpoints):
    assert run_cli(checkpoints, "adapter", "audit-lora", 8.0, "--base", str(checkpoints / "base")) == 0
    audit = json.loads((checkpoints / "audit-lora" / "audit.json").read_text())
    assert audit["model"]["kind"] == "classifier" and 0.0 <= audit["attacks"][0]["auc"] <= 1.0
    assert "--base" in audit["reproduce"]
    # no test may accept both 0 and 1: with this few canaries no bound can reach the claim ε = 8
    # (the ceiling), so the gate must pass (exit 1 would be a false refutation)
    assert max(audit["ceiling"].values()) < 8.0
    assert main(["gate", "--run", str(checkpoints / "audit-lora")]) == 0


def test_external_checkpoint_with_reference_attack_exits_2(checkpoints, capsys):
    err = one_line_error(capsys, 2, run_cli(checkpoints, "bert", "audit-x", 1.0, "--set", 'attacks=["lira-online"]'))
    assert "--model" in err


def test_causal_lm_checkpoint_with_exposure(checkpoints):
    assert run_cli(checkpoints, "gpt2", "audit-lm", 1.0, "--candidates", str(checkpoints / "candidates.txt"),
                   "--set", 'attacks=["all"]', "--set", "secrets.space_size=1000000", canaries_file="secrets.jsonl") == 0
    out = checkpoints / "audit-lm"
    audit = json.loads((out / "audit.json").read_text())
    assert [a["name"] for a in audit["attacks"]] == ["loss", "zlib", "mink", "minkpp", "exposure", "extraction"]
    exp = next(a for a in audit["attacks"] if a["name"] == "exposure")
    assert exp["details"]["bound"] == "exposure" and exp["details"]["n_candidates"] == 4095
    assert exp["auc"] > 0.8
    bounds = [e for e in audit["estimates"] if e["method"] == "exposure"]
    assert len(bounds) == 1 and bounds[0]["attack"] == "exposure" and bounds[0]["is_bound"]
    # (attack, estimator) pairs (fdp, the default) + the exposure bound + the extraction bound
    assert audit["verdict"]["n_tests"] == 6 * 1 + 2
    assert bounds[0]["alpha"] == pytest.approx(0.05 / 8)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "candidates.txt" in manifest["artifacts"]
    # the memorised secrets refute ε = 1; the exposure bound alone does too
    assert bounds[0]["epsilon_lb"] > 1.0
    assert bounds[0]["epsilon_lb"] <= audit["ceiling"]["exposure"] + 1e-9 < np.log(4096)  # limited by K
    assert main(["gate", "--run", str(out)]) == 1
    assert main(["gate", "--run", str(out), "--policy", str(write_policy(out))]) == 1


def write_policy(out: Path) -> Path:
    p = out.parent / "exposure-only.toml"
    p.write_text('attacks = ["exposure"]\nestimators = ["steinke"]\n')
    return p


def test_canaries_longer_than_the_model_are_truncated_and_recorded(checkpoints, tmp_path):
    """Bug caught (issue 13 item 6): signals truncated at a fixed 128 tokens while this model has 16
    positions: an IndexError half-way, leaving a half-made out dir. Now truncated to the model's
    limit and recorded in audit.json."""
    rows = canaries(40, seed=5)
    for r in rows[:3]:
        r["text"] = r["text"] + " " + " ".join(WORDS[i % len(WORDS)] for i in range(60))
    write_jsonl(tmp_path / "long.jsonl", rows)
    code = main(["run", "--model", str(checkpoints / "bert"), "--canaries", str(tmp_path / "long.jsonl"),
                 "--epsilon", "1", "--delta", "1e-5", "--out", str(tmp_path / "out"), "--quiet", "--no-report"])
    assert code == 0
    model = json.loads((tmp_path / "out" / "audit.json").read_text())["model"]
    assert model["max_input_tokens"] == 16 and model["truncated_canaries"] == 3
