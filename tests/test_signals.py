"""Signals (dp_audit.attacks.signals) on tiny random-init models, checked against direct
computations with torch; save/load round trip; ReferenceSignals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_audit.attacks.signals import ReferenceSignals, Signals, compute_signals, confidence_logit_from_logits
from dp_audit.errors import IntegrityError, UsageError
from tests.test_attacks_tiny_models import make_tokenizer, random_texts, tiny_bert, tiny_gpt2, tiny_llama


def test_confidence_logit_is_log_odds_of_the_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(50, 4))
    labels = rng.integers(0, 4, 50)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p[np.arange(50), labels]
    np.testing.assert_allclose(confidence_logit_from_logits(logits, labels), np.log(py) - np.log1p(-py), rtol=1e-9,
                               atol=1e-9)
    # stable where the naive form is not: p_y rounds to 1 in float64
    phi = confidence_logit_from_logits(np.array([[0.0, 60.0]]), np.array([1]))
    assert phi[0] == pytest.approx(60.0)


def test_classifier_signals_match_torch_and_do_not_depend_on_batching():
    tok, model = make_tokenizer(), tiny_bert(seed=1)
    texts = random_texts(7, seed=2, length=5) + ["the cat"]  # different lengths -> padding
    labels = [0, 1, 1, 0, 1, 0, 0, 1]
    s = compute_signals(model, tok, texts, labels, kind="classifier", batch_size=3, progress=False)
    s_one = compute_signals(model, tok, texts, labels, kind="classifier", batch_size=64, progress=False)
    with torch.inference_mode():
        ref = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts]).numpy()
    np.testing.assert_allclose(s.logits, ref, atol=1e-5)
    np.testing.assert_allclose(s_one.loss, s.loss, atol=1e-5)
    ce = torch.nn.functional.cross_entropy(torch.as_tensor(ref, dtype=torch.float64), torch.as_tensor(labels),
                                           reduction="none").numpy()
    np.testing.assert_allclose(s.loss, ce, atol=1e-6)
    assert s.confidence_logit.shape == (8,) and s.token_logprobs is None
    assert s.text_bytes_zlib.shape == (8,) and np.all(s.text_bytes_zlib > 0)
    with pytest.raises(UsageError, match="labels"):
        compute_signals(model, tok, texts, None, kind="classifier", progress=False)
    with pytest.raises(UsageError, match="labels must lie"):
        compute_signals(model, tok, texts, [5] * 8, kind="classifier", progress=False)


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_causal_lm_token_signals_match_torch(builder):
    tok, model = make_tokenizer(bert_style=False), builder(seed=3)  # no pad token: padding is ours
    texts = random_texts(5, seed=4, length=7) + ["my pin is 1 2"]
    s = compute_signals(model, tok, texts, kind="causal-lm", batch_size=4, progress=False)
    L = max(len(tok(t)["input_ids"]) for t in texts) - 1
    assert s.token_logprobs.shape == s.token_mask.shape == s.token_mu.shape == (6, L)
    with torch.inference_mode():
        for i, t in enumerate(texts):
            ids = torch.as_tensor(tok(t)["input_ids"])[None]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            lp = logp.gather(1, ids[0, 1:, None]).squeeze(1).numpy()
            n = lp.size
            assert s.token_mask[i].sum() == n
            np.testing.assert_allclose(s.token_logprobs[i, :n], lp, atol=1e-4)
            assert s.loss[i] == pytest.approx(-lp.mean(), abs=1e-4)
            p = logp.exp()
            mu = (p * logp).sum(-1).numpy()
            sd = np.sqrt((p * (logp - (p * logp).sum(-1, keepdim=True)) ** 2).sum(-1).numpy())
            assert sd.min() > 0.05  # a non-degenerate next-token distribution
            np.testing.assert_allclose(s.token_mu[i, :n], mu, atol=1e-4)
            np.testing.assert_allclose(s.token_sigma[i, :n], sd, atol=1e-3)
    assert s.logits is None and s.confidence_logit is None


def test_candidate_losses_are_the_losses_of_the_candidate_texts():
    tok, model = make_tokenizer(bert_style=False), tiny_gpt2(seed=5)
    texts = ["my pin is 1 2 3", "my pin is 4 5 6"]
    cands = ["my pin is 7 8 9", "my pin is 1 1 1", "my pin is 7 8 9"]
    s = compute_signals(model, tok, texts, kind="causal-lm", candidates=cands, progress=False)
    direct = compute_signals(model, tok, cands, kind="causal-lm", progress=False).loss
    assert s.candidate_loss.shape == (2, 3)
    np.testing.assert_allclose(s.candidate_loss, np.tile(direct, (2, 1)), atol=1e-6)
    with pytest.raises(UsageError, match="fewer than 2 tokens"):
        compute_signals(model, tok, ["cat"], kind="causal-lm", progress=False)


def test_save_load_round_trip_omits_absent_fields(tmp_path):
    s = Signals(loss=[0.1, 0.2], labels=[0, 1], confidence_logit=[1.0, -1.0])
    s.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["confidence_logit", "labels", "loss"]
    back = Signals.load(tmp_path / "s.npz")
    assert back.logits is None and back.token_logprobs is None
    np.testing.assert_array_equal(back.loss, s.loss)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(IntegrityError):
        Signals.load(tmp_path / "bad.npz")
    with pytest.raises(UsageError, match="rows"):
        Signals(loss=[0.1, 0.2], labels=[0, 1, 1])
    with pytest.raises(UsageError, match="NaN"):
        Signals(loss=[0.1, np.nan])


def test_reference_signals_from_reference_task_files(tmp_path):
    # the layout dp_audit.reference.reference_task writes: in_mask plus the signal arrays
    from dp_audit.io import save_npz

    for r in range(3):
        save_npz(tmp_path / f"ref-{r:03d}.npz", in_mask=np.array([r == 0, True, False]), loss=np.array([1.0, 2.0, r]))
    ref = ReferenceSignals.load_files(sorted(tmp_path.glob("ref-*.npz")))
    assert ref.n_models == 3 and ref.n == 3
    np.testing.assert_array_equal(ref.stack("loss")[:, 2], [0.0, 1.0, 2.0])
    assert ref.in_mask.tolist() == [[True, True, False], [False, True, False], [False, True, False]]
    with pytest.raises(UsageError, match="confidence_logit"):
        ref.stack("confidence_logit")
    with pytest.raises(UsageError, match="in_mask"):
        ReferenceSignals(signals=(Signals(loss=[1.0, 2.0]),), in_mask=np.ones((1, 3), bool))
