"""Prefix tuning on the top k encoder layers (``model.prefix_layers = k``, dp_audit.prefix_layers)
with the frozen bottom's outputs cached per input (trainers/feature_cache.py), and DP-Flat on it
(issue 14, DP-Flat on MiniLM)."""

from __future__ import annotations

import json

import pytest
import torch

L = 4  # encoder layers of the test model


def _bert(seed: int = 1, *, dropout: float = 0.0):
    from transformers import BertConfig, BertForSequenceClassification

    from dp_audit.trainers.backbone import init_weights_

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=L, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=40, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    m = BertForSequenceClassification(cfg)
    init_weights_(m, generator=torch.Generator().manual_seed(seed), std=0.5)  # outputs sensitive to every input
    return m


def _prefix_model(k: int, *, cache: bool, seed: int = 1, dropout: float = 0.0, tokens: int = 3):
    from dp_audit.config import ModelConfig
    from dp_audit.trainers.feature_cache import cache_bottom_layers_
    from dp_audit.trainers.modeling import apply_tuning

    model = apply_tuning(_bert(seed, dropout=dropout), ModelConfig(tuning="prefix", num_virtual_tokens=tokens,
                                                                   prefix_layers=k),
                         generator=torch.Generator().manual_seed(7))
    if cache:
        assert cache_bottom_layers_(model.get_base_model())
    return model


def _inputs(n: int = 12, length: int = 9, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[n // 2:, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "position_ids": torch.arange(length).expand(n, -1).contiguous()}


def _rows(inputs: dict, rows) -> dict:
    return {k: v[rows] for k, v in inputs.items()}


def test_cached_bottom_gives_the_uncached_logits_and_gradients():
    """With the bottom cached, logits equal the uncached top-layer prefix model's (same weights),
    in eval and in train mode (the bottom is a frozen eval-mode function in both; the top keeps
    dropout, here 0), for batches that mix cached and new rows in any order and rows that differ
    only in the mask; the prefix gradients are equal too. Bugs caught (each seen to fail): the
    stored row put under another row's key (``_STORE[(key, rows[j])]``), the mask left out of the
    key, the bottom run with the prefix's extended mask, the bottom run in train mode (dropout)."""
    x = _inputs()
    ref, cached = _prefix_model(2, cache=False), _prefix_model(2, cache=True)
    for mode in ("eval", "train"):
        ref.train(mode == "train")
        cached.train(mode == "train")
        for rows in (torch.arange(0, 12, 2), torch.arange(12).flip(0), torch.tensor([3, 1, 3, 11])):
            torch.testing.assert_close(cached(**_rows(x, rows)).logits, ref(**_rows(x, rows)).logits)
    other_mask = _rows(x, torch.tensor([0]))
    other_mask["attention_mask"] = other_mask["attention_mask"].clone()
    other_mask["attention_mask"][0, -1] = 0  # same ids as a cached row, another mask
    torch.testing.assert_close(cached(**other_mask).logits, ref(**other_mask).logits)
    grads = []
    for m in (ref, cached):
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(**x).logits, torch.arange(12) % 2).backward()
        grads.append(m.prompt_encoder.default.embedding.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].norm() > 0
    # with dropout, the bottom is still the eval-mode function in a model in train mode
    noisy = _prefix_model(2, cache=False, dropout=0.5).train()
    body = noisy.get_base_model().bert
    first, second = body._dp_audit_bottom(**x), body._dp_audit_bottom(**x)
    torch.testing.assert_close(first, second)
    noisy.eval()
    torch.testing.assert_close(first, body._dp_audit_bottom(**x))


def test_prefix_on_every_layer_through_the_router_equals_peft():
    """k = L through the router (bottom = embeddings only; the last layer computed for the first
    token only) gives PEFT's own prefix model's logits for the same prefix weights, with padded
    rows. Bugs caught: the prefix layers read with a wrong offset, the top layers run with the
    text-only mask (the prefix ignored), the first-token layer without the attention scaling or the
    padding mask, its residual taken from the wrong token."""
    x = _inputs()
    routed, plain = _prefix_model(L, cache=False), _prefix_model(0, cache=False)
    assert routed.prompt_encoder.default.embedding.weight.shape == plain.prompt_encoder.default.embedding.weight.shape
    routed.eval()
    plain.eval()
    torch.testing.assert_close(routed(**x).logits, plain(**x).logits)


@pytest.mark.parametrize("positions", ["text", "shifted"])
def test_roberta_prefix_on_every_layer_through_the_router_equals_peft(positions):
    """RoBERTa numbers real tokens from padding_idx + 1 and gives pads padding_idx. k = L through
    the router equals PEFT's prefix model on a RoBERTa with padded rows, for the text positions and
    for PEFT's shifted ones. Bug caught (seen to fail, logits off by 2.5): the router giving the
    text BERT's positions T, T + 1, ... under ``prefix_positions = "shifted"``, ignoring RoBERTa's
    padding offset."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from dp_audit.config import ModelConfig
    from dp_audit.trainers.backbone import init_weights_
    from dp_audit.trainers.modeling import apply_tuning

    def model(k: int):
        cfg = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=40, pad_token_id=1,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        m = RobertaForSequenceClassification(cfg)
        init_weights_(m, generator=torch.Generator().manual_seed(1), std=0.5)
        tuning = ModelConfig(tuning="prefix", num_virtual_tokens=3, prefix_layers=k, prefix_positions=positions)
        return apply_tuning(m, tuning, generator=torch.Generator().manual_seed(7)).eval()

    x = _inputs(n=6)
    x.pop("position_ids")
    x.pop("token_type_ids")
    x["input_ids"][x["attention_mask"] == 0] = 1  # padded with RoBERTa's pad id
    with torch.no_grad():
        torch.testing.assert_close(model(3)(**x).logits, model(0)(**x).logits)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_bottom_equals_the_models_own_hidden_states(arch, attn):
    """The bottom (embeddings + the first ``offset`` layers, dp_audit.prefix_layers.compute_bottom)
    equals the model's own forward's hidden state after ``offset`` layers, with padded rows and for a
    batch without padding (where transformers' mask builder returns None), for BERT and RoBERTa
    (padded positions), eager and sdpa attention. The other tests compare the routed model with
    itself (cached vs uncached) or use k = L (no bottom layer), so a wrong bottom mask went unseen.
    Bug caught (seen to fail): the bottom's self-attention mask built without the padding (real
    tokens attend to pads), e.g. a ``_create_attention_masks`` call whose arguments moved (the
    position_ids added in transformers 5.25)."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    from dp_audit.prefix_layers import compute_bottom
    from dp_audit.trainers.backbone import init_weights_

    kw = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if arch == "bert":
        model = BertForSequenceClassification._from_config(BertConfig(**kw), attn_implementation=attn)
    else:
        model = RobertaForSequenceClassification._from_config(RobertaConfig(pad_token_id=1, **kw),
                                                              attn_implementation=attn)
    init_weights_(model, generator=torch.Generator().manual_seed(1), std=0.5)
    body = getattr(model, model.base_model_prefix).eval()
    x = _inputs(n=6)
    for padded in (True, False):
        mask = x["attention_mask"] if padded else torch.ones_like(x["attention_mask"])
        ids = x["input_ids"].clone()
        if arch == "roberta":
            ids[mask == 0] = 1  # RoBERTa's pad id (its positions skip pads)
        with torch.no_grad():
            own = body(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for offset in (1, 2):
            torch.testing.assert_close(compute_bottom(body, offset, input_ids=ids, attention_mask=mask), own[offset])


def test_cache_follows_bottom_weights_changed_in_place():
    """The cache key follows the bottom's weights: after a bottom weight changes in place (as a
    ``load_state_dict`` does), the cached model gives the uncached model's new logits, not features
    computed with the old weights. Bug caught (seen to fail): the weights' fingerprint computed
    once when the cache is set up."""
    x = _inputs()
    ref, cached = _prefix_model(2, cache=False).eval(), _prefix_model(2, cache=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(cached(**x).logits, ref(**x).logits)  # fills the cache
        for m in (ref, cached):
            m.get_base_model().bert.encoder.layer[0].attention.self.query.weight.mul_(1.5)
        new = ref(**x).logits
        torch.testing.assert_close(cached(**x).logits, new)
        for m in (ref, cached):
            m.get_base_model().bert.embeddings.word_embeddings.weight[:, 0].add_(1.0)
        torch.testing.assert_close(cached(**x).logits, ref(**x).logits)
    assert not torch.allclose(new, ref(**x).logits)


def test_top_layer_adapter_on_a_base_without_the_key_is_an_integrity_error(tmp_path):
    """A top-k prefix adapter reloaded on a base model whose config lacks ``dp_audit_prefix_layers``
    (e.g. ``dp-audit run --base`` pointed at the original checkpoint instead of the run's
    base_model) is a one-line integrity error, and the routed forward refuses hidden-state requests
    instead of returning wrong ones. Bugs caught (seen to fail): the reload crashing with an
    IndexError at the first forward (exit 4) or putting the prefix on the bottom layers; the routed
    forward silently ignoring ``output_hidden_states``."""
    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.errors import IntegrityError, UsageError

    model = _prefix_model(2, cache=False)
    model.save_pretrained(tmp_path / "adapter")
    _bert(1).save_pretrained(tmp_path / "base")
    with pytest.raises(IntegrityError, match="prefix adapter has 2 layer"):
        load_hf_model(tmp_path / "adapter", base=tmp_path / "base")
    with pytest.raises(UsageError, match="hidden states"):
        model(**_inputs(), output_hidden_states=True)


def test_prefix_layer_j_acts_on_encoder_layer_offset_plus_j_only():
    """With k = 2 of 4 layers, the PEFT prefix has 2 layers; changing prefix layer j changes the
    output of encoder layer 2 + j and leaves every layer below it unchanged (the bottom never sees
    the prefix). Bugs caught: an off-by-one offset (prefix layer j on encoder layer 1 + j, or the top
    layer without a prefix), a bottom that receives a prefix."""
    from dp_audit.trainers.dpflat_prefix import layout_of, prefix_weight

    model = _prefix_model(2, cache=False).eval()
    layout = layout_of(model)
    assert layout.num_layers == 2 and model.get_base_model().config.dp_audit_prefix_layers == 2
    outs: dict[int, torch.Tensor] = {}
    layers = model.get_base_model().bert.encoder.layer
    # hooks on each layer's output block (the last layer runs it for the first token only)
    handles = [layer.output.register_forward_hook(lambda m, i, o, idx=idx: outs.__setitem__(idx, o.detach().clone()))
               for idx, layer in enumerate(layers)]
    x = _inputs()
    try:
        with torch.no_grad():
            model(**x)
            before = dict(outs)
            for j in range(2):
                w = prefix_weight(model)
                saved = w.detach().clone()
                w[:, layout.layer_slice(j)] += 1.0
                model(**x)
                w.copy_(saved)
                for idx in range(L):
                    changed = not torch.equal(outs[idx], before[idx])
                    assert changed == (idx >= 2 + j), (j, idx)
    finally:
        for h in handles:
            h.remove()


def test_prefix_layers_config_checks(tiny_config):
    """k beyond the depth, negative k, and a sparse selection that would remove every prefixed
    layer are one-line usage errors. Bug caught: a k > L run that silently puts a prefix nowhere."""
    from dp_audit.errors import UsageError

    with pytest.raises(UsageError, match="prefix_layers"):
        tiny_config(model={"tuning": "prefix", "prefix_layers": 3})
    with pytest.raises(UsageError, match="prefix_layers"):
        tiny_config(model={"tuning": "prefix", "prefix_layers": -1})
    with pytest.raises(UsageError, match="sparse_k = 1 must be below model.prefix_layers"):
        tiny_config(trainer="dpflat", model={"tuning": "prefix", "prefix_layers": 1})
    with pytest.raises(UsageError, match="needs model.tuning = 'prefix'"):
        tiny_config(model={"tuning": "head", "prefix_layers": 1})
    with pytest.raises(UsageError, match="must be in 1..4"):
        _prefix_model(5, cache=False)


def test_prefix_layers_on_a_gpt2_is_a_usage_error():
    """GPT-2 takes a key/value cache (so prefix tuning is allowed) but has no BERT-style encoder
    (its head reads the last token): ``prefix_layers`` there is a one-line usage error, not a
    crash or a silently unrouted prefix. Bug caught: the router accepting any body with a cache."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from dp_audit.config import ModelConfig
    from dp_audit.errors import UsageError
    from dp_audit.trainers.modeling import apply_tuning

    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                                    pad_token_id=0))
    with pytest.raises(UsageError, match="BERT-style encoder"):
        apply_tuning(gpt2, ModelConfig(tuning="prefix", num_virtual_tokens=3, prefix_layers=1),
                     generator=torch.Generator().manual_seed(0))


def _three_layer_checkpoint(root):
    """A seeded 3-layer tiny BERT (masked LM) saved with its WordLevel tokenizer, and csv splits."""
    import transformers as tf

    from tests.user_fixtures import sentiment_rows, train_word_tokenizer, write_rows

    rows = sentiment_rows(60, seed=0)
    public = sentiment_rows(24, seed=3)
    files = {"train": str(write_rows(root / "train.csv", rows, "csv")),
             "test": str(write_rows(root / "test.csv", sentiment_rows(16, seed=2), "csv")),
             "dev": str(write_rows(root / "dev.csv", sentiment_rows(12, seed=1), "csv")),
             "public": str(write_rows(root / "public.csv", public, "csv"))}
    tok = train_word_tokenizer([r["text"] for r in rows + public], kind="bert")
    model = tf.BertForMaskedLM(tf.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                             pad_token_id=tok.convert_tokens_to_ids("[PAD]")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2, generator=g)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return files, root / "model"


def test_dpflat_on_top_layer_prefix_trains_and_its_run_audits(tmp_path):
    """DP-Flat in paper mode (AWP, sparse selection, distillation) with ``prefix_layers = 2`` on a
    3-layer tiny BERT (``model.path``): trains, the selection removes one of the two prefixed layers
    (encoder layer 1 or 2, never the prefix-free layer 0), AWP runs, the saved adapter has 2 prefix
    layers with the removed one zero, the run directory holds no cached features, ``dp-audit run``
    audits it (exit 0, PASS), and the model reloaded as the audit does (routed from its saved
    config) gives the trained model's test accuracy. Bugs caught: DP-Flat's components indexing
    encoder layers instead of prefix layers, a reload that puts the 2-layer prefix on the bottom
    layers (or forgets ``dp_audit_prefix_layers``), features of private inputs written to the run."""
    from safetensors.torch import load_file

    from dp_audit.attacks.loading import load_hf_model
    from dp_audit.cli import main
    from dp_audit.config import run_config_from_dict
    from dp_audit.trainers.base import train_run
    from dp_audit.trainers.data_files import load_task_files
    from dp_audit.trainers.modeling import accuracy, encode, input_layout

    files, path = _three_layer_checkpoint(tmp_path)
    cfg = run_config_from_dict({
        "trainer": "dpflat", "data": {"source": "csv", **files, "max_length": 12},
        "model": {"path": str(path), "tuning": "prefix", "num_virtual_tokens": 3, "prefix_layers": 2},
        "canaries": {"m": 12}, "train": {"epochs": 2, "batch_size": 24, "progress": False},
        # σ given (no calibration); a non-private selection prefix (no ε = 8 calibration either)
        "privacy": {"reproducible_noise": True, "noise_multiplier": 1.0},
        "dpflat": {"awp_gamma": 1e-2, "awp_micro_batch": 4, "distill_epochs": 1, "sparse_reference_epochs": 1,
                   "sparse_reference": "nonprivate"}})
    out = train_run(cfg, tmp_path / "run", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    notes = manifest["notes"]["dpflat"]
    assert notes["prefixed_encoder_layers"] == [1, 2]
    (removed,) = notes["sparse"]["removed_layers"]
    assert notes["sparse"]["removed_encoder_layers"] == [1 + removed]
    assert notes["awp"]["applied"] > 0
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert adapter["num_layers"] == 2
    weights = load_file(str(out / "model" / "adapter_model.safetensors"))
    (prefix,) = [v for k, v in weights.items() if "prompt_embeddings" in k or "prompt_encoder" in k]
    h = 32
    assert prefix.shape[1] == 2 * 2 * h
    assert torch.count_nonzero(prefix[:, 2 * removed * h:(2 * removed + 2) * h]) == 0
    assert torch.count_nonzero(prefix) > 0
    assert json.loads((out / "base_model" / "config.json").read_text())["dp_audit_prefix_layers"] == 2
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".npy", ".pkl", ".bin")]

    (tmp_path / "audit.toml").write_text('formats = ["json"]\n')
    assert main(["run", "--run", str(out), "--config", str(tmp_path / "audit.toml")]) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["verdict"]["status"] == "pass"
    model, tok, _ = load_hf_model(out / "model", base=out / "base_model")
    task = load_task_files(cfg.data)
    test = encode(tok, task.test.texts, task.test.labels, max_length=cfg.data.max_length,
                  layout=input_layout(model.config))
    assert accuracy(model, test) == pytest.approx(manifest["notes"]["metrics"]["test_accuracy"])
