"""Tiny models and an offline tokenizer shared by the attack-layer tests (no downloads).

The helpers build a WordLevel tokenizer with the ``tokenizers`` library, wrapped in
``PreTrainedTokenizerFast``, and tiny random-init models from configs; weights are re-drawn from an
explicit ``torch.Generator`` (Hugging Face's own init uses the global RNG).
"""

from __future__ import annotations

import numpy as np
import torch

WORDS = ("the a cat dog sat on mat my pin is 0 1 2 3 4 5 6 7 8 9 red blue green fish bird tree "
         "house car runs fast slow big small zq1 zq2 zq3 zq4 zq5 zq6").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def make_tokenizer(*, bert_style: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert_style:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")  # no pad token, like GPT-2


def seeded_init_(model, *, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2, generator=g)
            elif ("norm" in name.lower() or ".ln_" in name) and name.endswith("weight"):  # GPT-2: ln_1, ln_f
                p.fill_(1.0)
            else:
                p.zero_()
    return model


def tiny_bert(*, seed: int = 0, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, pad_token_id=0,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return seeded_init_(BertForSequenceClassification(cfg), seed=seed).eval()


def tiny_gpt2(*, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    v = len(SPECIAL) + len(WORDS)
    cfg = GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=2, eos_token_id=3,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return seeded_init_(GPT2LMHeadModel(cfg), seed=seed).eval()


def tiny_llama(*, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    v = len(SPECIAL) + len(WORDS)
    cfg = LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return seeded_init_(LlamaForCausalLM(cfg), seed=seed).eval()


def random_texts(n: int, *, seed: int, length: int = 6) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), size=length)) for _ in range(n)]


def test_tokenizer_is_offline_and_splits_words():
    tok = make_tokenizer()
    enc = tok(["the cat sat", "my pin is 1 2"])
    assert [len(x) for x in enc["input_ids"]] == [5, 7]  # [CLS] ... [SEP]
    assert make_tokenizer(bert_style=False).pad_token_id is None
