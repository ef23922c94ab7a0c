"""Book-keeping clipping (``privacy.grad_sample_mode = "bk"``, trainers/dpsgd_bk.py) against
Opacus' materialised per-sample gradients: the clipped sum Σ_i min(1, C/‖∇ℓ_i‖)·∇ℓ_i must be the
same, parameter by parameter, for full fine-tuning (word/position/type embeddings with a padding
index, LayerNorm, Linear on sequences and on the pooled vector), frozen word embeddings, LoRA and
the PEFT prefix."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch

from dp_audit.config import ModelConfig
from dp_audit.errors import UsageError
from dp_audit.trainers.dpsgd_bk import BookKeeping
from dp_audit.trainers.modeling import apply_tuning, model_inputs
from tests.test_dpflat_mechanisms import tiny_batch


def tiny_model(tuning: str, *, freeze: bool = False, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.backbone import init_weights_

    g = torch.Generator().manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertForSequenceClassification(cfg)
    init_weights_(model, generator=g, std=0.2)
    return apply_tuning(model, ModelConfig(tuning=tuning, num_virtual_tokens=3, lora_r=2, freeze_embeddings=freeze),
                        generator=g)


def padded_batch():
    """Ids with padding (id 0, the embedding's padding index), also inside attended text (where
    its gradient is not ~0), and repeated tokens in a row (the ghost norm's same-id cross terms)."""
    b = tiny_batch(n=7, length=9, seed=4)
    b["input_ids"][:, 6:] = 0
    b["attention_mask"][:, 6:] = 0
    b["input_ids"][0, :4] = 7
    b["input_ids"][1:4, 2] = 0
    return b


def opacus_clipped_sum(model, batch, clip: float):
    from opacus import GradSampleModule

    ref = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = torch.nn.functional.cross_entropy(ref(**model_inputs(batch)).logits, batch["labels"], reduction="sum")
        loss.backward()
    for m in ref._module.modules():  # Opacus ignores padding_idx; torch's gradient of that row is 0
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None and m.weight.requires_grad:
            m.weight.grad_sample[:, m.padding_idx] = 0
    named = [(n, p) for n, p in ref._module.named_parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for _, p in named]).norm(dim=0)
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("i,i...->...", coef, p.grad_sample) for n, p in named}, norms


@pytest.mark.parametrize("tuning,freeze", [("full", False), ("full", True), ("lora", False), ("prefix", False)])
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_bk_clipped_sum_equals_opacus_per_sample_clipping(tuning, freeze, clip):
    """Bugs caught: a wrong ghost norm (missing same-token cross terms of an embedding, the
    padding index counted, a per-sample norm summed over tokens before squaring), a layer type
    left out of the norm (LayerNorm, the pooler's 2-D Linear, the prefix embedding), clipping
    coefficients not applied to every parameter's sum, or frozen weights given a gradient."""
    model = tiny_model(tuning, freeze=freeze)
    batch = padded_batch()
    expected, norms = opacus_clipped_sum(model, batch, clip)
    model.train()
    bk = BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=clip))
    bk.loss(model(**model_inputs(batch)).logits, batch["labels"]).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == set(expected)
    assert torch.allclose(bk.last_norms, norms, rtol=1e-4, atol=1e-6)
    if clip < 1:
        assert bool((norms > clip).all())  # every example clipped: the coefficients matter
    for n in expected:
        assert got[n] is not None, n
        assert torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-6), n
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_bk_refuses_layers_it_cannot_clip():
    """Bug caught: a trainable layer type the book-keeping pass has no norm for (here a
    Conv1d) silently left out of the clipping, so its gradient would be unclipped."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, device="meta"), torch.nn.Conv1d(1, 1, 2, device="meta"))
    with pytest.raises(UsageError, match="Conv1d"):
        BookKeeping(model, clip_source=SimpleNamespace(max_grad_norm=1.0))
