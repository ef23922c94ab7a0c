"""Fixtures for "your data, your model": small data files and tiny save_pretrained checkpoints
(random init from small configs, a WordLevel tokenizer trained with ``tokenizers`` on the fixture
texts, saved beside the weights), all written into a test's tmp_path. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

POSITIVE = ("good", "great", "fine", "lovely", "bright", "happy", "warm", "kind")
NEGATIVE = ("bad", "awful", "poor", "dull", "sad", "cold", "rude", "grim")
FILLER = ("the", "a", "movie", "film", "plot", "cast", "was", "very", "and", "story", "end", "music")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_KINDS = ("bert", "roberta", "distilbert", "gpt2")


def sentiment_rows(n: int, *, seed: int, num_labels: int = 2) -> list[dict]:
    """Short English-like texts whose label is the majority polarity (labels 0..num_labels-1;
    with 3 labels, label 2 = texts without polar words)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y = int(rng.integers(num_labels))
        words = [FILLER[j] for j in rng.integers(0, len(FILLER), size=int(rng.integers(4, 8)))]
        if y < 2:
            pool = POSITIVE if y == 1 else NEGATIVE
            for _ in range(2):
                words.insert(int(rng.integers(len(words) + 1)), pool[int(rng.integers(len(pool)))])
        words.append(f"w{i}")  # texts are distinct
        rows.append({"text": " ".join(words), "label": y})
    return rows


def write_rows(path: Path, rows: list[dict], fmt: str, *, text_column: str = "text",
               label_column: str = "label") -> Path:
    import pandas as pd

    df = pd.DataFrame({text_column: [r["text"] for r in rows], label_column: [r["label"] for r in rows]})
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({text_column: r["text"], label_column: r["label"]}) + "\n" for r in rows))
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "hf-disk":
        import datasets

        datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(path))
    else:
        raise ValueError(fmt)
    return path


def train_word_tokenizer(texts: list[str], *, kind: str):
    """A WordLevel tokenizer trained on ``texts`` (BERT-style [CLS] ... [SEP]; GPT-2 style: no
    specials around the text, end-of-text token as padding)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainer=trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    names = ["input_ids", "attention_mask"] if kind in ("distilbert", "gpt2") else None
    extra = {"model_input_names": names} if names else {}
    if kind == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]", **extra)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", **extra)


def tiny_model(kind: str, vocab_size: int, *, pad_id: int, eos_id: int):
    """A masked-LM (bert, roberta, distilbert) or causal-LM (gpt2) model: no classification head."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    if kind == "bert":
        cfg = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=64, **common)
        return tf.BertForMaskedLM(cfg)
    if kind == "roberta":
        cfg = tf.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=72, type_vocab_size=1, **common)
        return tf.RobertaForMaskedLM(cfg)
    if kind == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **common)
        return tf.DistilBertForMaskedLM(cfg)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=eos_id, eos_token_id=eos_id,
                            **common)
        return tf.GPT2LMHeadModel(cfg)
    raise ValueError(kind)


def save_tiny_checkpoint(folder: Path, kind: str, texts: list[str], *, seed: int = 0) -> Path:
    """``save_pretrained`` of a randomly initialised (seeded) tiny model and its tokenizer."""
    tok = train_word_tokenizer(texts, kind=kind)
    pad_id = tok.convert_tokens_to_ids("[PAD]")
    model = tiny_model(kind, len(tok), pad_id=pad_id, eos_id=tok.convert_tokens_to_ids("[SEP]"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2, generator=g)  # large: inputs (positions, token types) visibly matter
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
