"""dp_audit.hf_compat: BERT (transformers 5) under PEFT prefix tuning, and the positions its text
tokens read (docs/trainers.md, "Positions under a prefix")."""

from __future__ import annotations

import pytest
import torch

T, L, B = 12, 10, 3


def _prefix_model(positions, *, max_positions=32, path=None):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.hf_compat import enable_prefix_tuning

    if path is None:
        cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=max_positions, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
        base = BertForSequenceClassification(cfg).eval()
    else:
        base = BertForSequenceClassification.from_pretrained(path, local_files_only=True).eval()
    base = enable_prefix_tuning(base, positions=positions)
    return base, get_peft_model(base, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=T))


def _positions_read(model, base, *, explicit: bool):
    seen = []
    emb = base.bert.embeddings.position_embeddings
    handle = emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    ids = torch.randint(5, 50, (B, L), generator=torch.Generator().manual_seed(0))
    kwargs = {"position_ids": torch.arange(L).expand(B, -1).contiguous()} if explicit else {}
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    handle.remove()
    return seen[0].expand(B, -1)  # BERT uses a (1, L) buffer when given no position_ids


@pytest.mark.parametrize("explicit", [True, False], ids=["position_ids-given", "position_ids-none"])
def test_text_mode_keeps_positions_from_zero_and_shifted_mode_is_pefts(explicit):
    base, model = _prefix_model("text")
    assert torch.equal(_positions_read(model, base, explicit=explicit), torch.arange(L).expand(B, -1))
    base, model = _prefix_model("shifted")
    assert torch.equal(_positions_read(model, base, explicit=explicit), torch.arange(T, T + L).expand(B, -1))


def test_text_mode_fits_a_prefix_longer_than_the_position_table_allows():
    base, model = _prefix_model("text", max_positions=16)  # T + L = 22 > 16
    ids = torch.randint(5, 50, (B, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (B, 2)
    base, model = _prefix_model("shifted", max_positions=16)
    with pytest.raises(Exception):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))


def test_the_choice_is_saved_with_the_base_model(tmp_path):
    from dp_audit.hf_compat import POSITIONS_KEY

    base, _ = _prefix_model("text")
    base.save_pretrained(tmp_path / "base")
    reloaded, model = _prefix_model(None, path=tmp_path / "base")
    assert getattr(reloaded.config, POSITIONS_KEY) == "text"
    assert torch.equal(_positions_read(model, reloaded, explicit=True), torch.arange(L).expand(B, -1))


def test_unknown_mode_is_refused():
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.hf_compat import enable_prefix_tuning

    with pytest.raises(ValueError, match="positions"):
        enable_prefix_tuning(BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=32,
                                                                      num_attention_heads=2, intermediate_size=32)),
                             positions="middle")
