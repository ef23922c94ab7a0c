"""White-box rare-token scores (dp_audit.attacks.whitebox; docs/whitebox.md), on a tiny BERT
classifier built from a config (no training): planted row displacements must be recovered
exactly, the batched own-row gradient must equal the per-example one, bad inputs must fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_audit.canaries import Canary, canary_token
from dp_audit.errors import UsageError

WORDS = ["bala", "doro", "fifu", "gage", "kiko", "lulu", "mama", "nono", "pipi", "rara"]


def _canaries(n: int, rng: np.random.Generator) -> list[Canary]:
    return [Canary(id=f"c{i}", text=f"{canary_token(i)} " + " ".join(rng.choice(WORDS, size=3)),
                   label=int(rng.integers(2)), member=bool(i % 2)) for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """base/, tokenizer/ and 8 rare-token canaries; a fresh model with a non-tiny head."""
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("wb")
    rng = np.random.default_rng(0)
    tok = train_tokenizer([" ".join(rng.choice(WORDS, size=6)) for _ in range(50)], vocab_size=30, max_length=16,
                          canary_tokens=8)
    tok.save_pretrained(root / "tokenizer")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=2, initializer_range=0.5)
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(root / "base")
    return root, tok, model, _canaries(8, rng)


def _save_final(root: Path, model, rows: np.ndarray, delta: np.ndarray, name: str) -> Path:
    final = type(model)(model.config)
    final.load_state_dict(model.state_dict())
    with torch.no_grad():
        final.get_input_embeddings().weight[torch.as_tensor(rows)] += torch.as_tensor(delta, dtype=torch.float32)
    final.save_pretrained(root / name)
    return root / name


def test_batched_own_row_gradient_equals_per_example(tiny):
    from dp_audit.attacks.whitebox import canary_token_ids, own_row_gradients

    root, tok, model, can = tiny
    ids = canary_token_ids(tok, can)
    work = type(model)(model.config)
    work.load_state_dict(model.state_dict())
    batched = own_row_gradients(work, tok, can, ids, batch_size=8)
    for i, c in enumerate(can):
        m = type(model)(model.config)
        m.load_state_dict(model.state_dict())
        m.eval()
        enc = tok([c.text], return_tensors="pt")
        torch.nn.functional.cross_entropy(m(**enc).logits, torch.tensor([c.label])).backward()
        np.testing.assert_allclose(batched[i], m.get_input_embeddings().weight.grad[ids[i]].double().numpy(),
                                   rtol=1e-4, atol=1e-7)
    assert np.all(np.linalg.norm(batched, axis=1) > 0)


def test_planted_displacement_is_recovered(tiny):
    """final = base + a_i·d_i + (junk ⟂ d_i) on canary rows only: projection = a_i exactly, norm
    = sqrt(a_i² + |junk|²); only canary rows differ, so every path point gives d_i."""
    from dp_audit.attacks.whitebox import THREAT_MODEL, canary_token_ids, own_row_gradients, rare_token_audit

    root, tok, model, can = tiny
    ids = canary_token_ids(tok, can)
    work = type(model)(model.config)
    work.load_state_dict(model.state_dict())
    d = -own_row_gradients(work, tok, can, ids)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rng = np.random.default_rng(1)
    a = rng.normal(size=len(can)) * 0.05
    junk = rng.normal(size=d.shape) * 0.02
    junk -= np.einsum("ij,ij->i", junk, d)[:, None] * d
    final = _save_final(root, model, ids, a[:, None] * d + junk, "final-planted")
    res = rare_token_audit(final, root / "base", root / "tokenizer", can, path_points=3)
    np.testing.assert_allclose(res.projection, a, atol=2e-6)
    np.testing.assert_allclose(res.norm, np.sqrt(a ** 2 + (junk ** 2).sum(1)), atol=2e-6)
    assert res.threat_model == THREAT_MODEL == "white-box"


def test_untouched_rows_score_exactly_zero(tiny):
    """No noise, non-members never read: their rows are bit-identical, so score 0 (the
    no-noise bug makes every sampled member differ from every non-member)."""
    from dp_audit.attacks.whitebox import canary_token_ids, rare_token_scores

    root, tok, model, can = tiny
    ids = canary_token_ids(tok, can)
    member = np.array([c.member for c in can])
    delta = np.where(member[:, None], 0.01, 0.0) * np.ones((len(can), model.config.hidden_size))
    final = _save_final(root, model, ids, delta, "final-members-only")
    for stat in ("projection", "norm"):
        s = rare_token_scores(final, root / "base", root / "tokenizer", can, statistic=stat)
        assert np.all(s[~member] == 0.0) and np.all(s[member] != 0.0)


def test_bad_inputs_fail_with_usage_errors(tiny, tmp_path):
    from dp_audit.attacks.whitebox import canary_token_ids, rare_token_audit, rare_token_scores

    root, tok, model, can = tiny
    with pytest.raises(UsageError, match="not one reserved token"):
        canary_token_ids(tok, [dataclasses.replace(can[0], text="bala doro")])
    with pytest.raises(UsageError, match="own reserved token"):
        canary_token_ids(tok, [can[0], dataclasses.replace(can[0], id="dup")])
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UsageError, match="PEFT adapter"):
        rare_token_audit(tmp_path / "adapter", root / "base", root / "tokenizer", can)
    with pytest.raises(UsageError, match="not found"):
        rare_token_audit(tmp_path / "missing", root / "base", root / "tokenizer", can)
    with pytest.raises(UsageError, match="statistic"):
        rare_token_scores(root / "base", root / "base", root / "tokenizer", can, statistic="loss")
