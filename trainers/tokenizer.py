"""A word-level tokenizer trained offline on the public split with Hugging Face ``tokenizers``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_tokenizer(texts: Sequence[str], *, vocab_size: int, max_length: int, canary_tokens: int = 0):
    """Return a ``PreTrainedTokenizerFast`` (BERT-style specials) trained on ``texts``, plus
    ``canary_tokens`` reserved words for rare-token canaries (dp_audit.canaries.canary_token)."""
    from dp_audit.canaries import canary_token

    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size + len(SPECIALS), special_tokens=list(SPECIALS))
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_tokens([canary_token(i) for i in range(canary_tokens)])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=max_length,
    )


def load_tokenizer(path: str | Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


LM_SPECIALS = ("[PAD]", "[UNK]", "<|endoftext|>")
BOS = "<|endoftext|>"
DIGIT_TEXT = " ".join("0123456789")


def train_lm_tokenizer(texts: Sequence[str], *, vocab_size: int, max_length: int, extra: Sequence[str] = ()):
    """A word-level tokenizer for the tiny causal LM, trained on ``texts`` (the public split) plus
    ``extra`` public strings (the canary template without its secret) and the ten digits: lower
    case, split on whitespace and punctuation, every digit one token (so a secret "4 8 1 5" or
    "4815" is 4 tokens). Each text starts with ``<|endoftext|>`` (GPT-2's BOS/EOS), so the first
    word is predicted too; padding is ``[PAD]`` (masked out of the loss)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size + len(LM_SPECIALS) + 10,
                                        special_tokens=list(LM_SPECIALS))
    tok.train_from_iterator([*texts, *extra, DIGIT_TEXT], trainer=trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token=BOS,
                                   eos_token=BOS, model_max_length=max_length)
