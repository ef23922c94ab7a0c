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
