"""tuning = "head" with the frozen body's outputs cached per input (trainers/feature_cache.py)."""

from __future__ import annotations

import torch


def _model(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.backbone import init_weights_

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.1)
    m = BertForSequenceClassification(cfg)
    init_weights_(m, generator=torch.Generator().manual_seed(seed), std=0.5)  # outputs sensitive to every input
    return m


def test_cached_head_model_equals_the_eval_mode_model_row_by_row():
    """The cached model's logits equal the uncached model's in eval mode, for batches that mix
    cached and new rows in any order; two bodies with other weights never share features; a
    trainable body is never cached. Bugs caught: features stored under the wrong row (off-by-one
    in the missing-row bookkeeping), the key ignoring the attention mask, train-mode dropout inside
    the cached body, a store shared across different weights."""
    from dp_audit.trainers.feature_cache import cache_frozen_body_
    from dp_audit.trainers.modeling import freeze_all_but_head

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (12, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[6:, 5:] = 0
    ids2 = ids.clone()
    mask2 = mask.clone()
    mask2[0, 7] = 0  # same ids as row 0, other mask

    ref = _model(1).eval()
    cached = _model(1)
    freeze_all_but_head(cached)
    assert cache_frozen_body_(cached)
    cached.train()  # the body is evaluated in eval mode all the same; the head's dropout stays
    cached.dropout.p = 0.0
    for rows in (torch.arange(0, 12, 2), torch.arange(12).flip(0), torch.tensor([3, 1, 3, 11])):
        got = cached(input_ids=ids[rows], attention_mask=mask[rows]).logits
        want = ref(input_ids=ids[rows], attention_mask=mask[rows]).logits
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(cached(input_ids=ids2[:1], attention_mask=mask2[:1]).logits,
                               ref(input_ids=ids2[:1], attention_mask=mask2[:1]).logits)
    other = _model(2)
    freeze_all_but_head(other)
    cache_frozen_body_(other)
    other.eval()
    torch.testing.assert_close(other(input_ids=ids, attention_mask=mask).logits,
                               _model(2).eval()(input_ids=ids, attention_mask=mask).logits)
    assert not cache_frozen_body_(_model(3))  # trainable body: not cached


def test_backbone_layers_keeps_the_first_layers_and_saves_that_depth(tmp_path):
    """model.backbone_layers = k keeps the first k encoder layers (their weights unchanged), the
    saved config says k (an audit reloads the model as trained), and k beyond the depth is a usage
    error. Bugs caught: the last layers kept instead of the first, the config left at the old
    depth (reloading would add random layers), a silent no-op."""
    import pytest
    from transformers import AutoModelForSequenceClassification

    from dp_audit.config import ModelConfig
    from dp_audit.errors import UsageError
    from dp_audit.trainers.modeling import build_classifier

    from transformers import BertConfig, BertForSequenceClassification

    deep = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=16))
    deep.save_pretrained(tmp_path / "deep")
    g = torch.Generator().manual_seed(0)
    m = build_classifier(tmp_path / "deep", ModelConfig(backbone_layers=2), generator=g)
    assert len(m.bert.encoder.layer) == 2 and m.config.num_hidden_layers == 2
    torch.testing.assert_close(m.bert.encoder.layer[1].attention.self.query.weight,
                               deep.bert.encoder.layer[1].attention.self.query.weight)
    m.save_pretrained(tmp_path / "out")
    again = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    assert len(again.bert.encoder.layer) == 2
    with pytest.raises(UsageError, match="exceeds"):
        build_classifier(tmp_path / "deep", ModelConfig(backbone_layers=4), generator=g)
