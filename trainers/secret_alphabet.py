"""The secret's alphabet of secret canaries (``canaries.secret_alphabet``, docs/language-models.md
"Designed secrets"): which symbols a secret is drawn from.

- ``digits``: the ten digits (the default; the canaries are byte for byte those of earlier runs).
- ``new-tokens`` (Panda et al., ICLR 2025, "Privacy auditing of large language models"):
  ``alphabet_size`` fresh tokens ``<|secret007|>`` added to the tokenizer at fine-tuning time,
  after the backbone is loaded (the cached tiny GPT-2 and its key are untouched), and the
  embedding table grown to hold them. No text of any split contains them (checked), so their
  embedding rows (and, tied, their output logits) are trained by the member canaries alone: a
  member's gradient is large and nearly orthogonal to the data's. New rows: the mean of the old
  rows plus N(0, initializer_range²) noise drawn from the run's init generator (not the global
  RNG, not transformers' mean-resizing, which samples with the global RNG).
- ``unseen``: ``alphabet_size`` existing vocabulary tokens that no split (train, dev, test,
  public) ever produces, for tokenizers where adding tokens is not wanted. Rule: vocabulary
  entries whose text is an alphabetic word of 2+ characters that tokenizes, after a space, to
  exactly that one token and decodes back to it; not a word of the template; never among the
  token ids of any encoded split; the ``alphabet_size`` of them with the highest ids (rarest for
  BPE merges and frequency-ordered word-level vocabularies), listed in id order.

The resolved list of symbols is recorded in the run (manifest notes ``canaries.alphabet``), so
the audit reads |R| = alphabet_size^n_digits from it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from dp_audit.config import DEFAULT_TOKEN_ALPHABET, RunConfig
from dp_audit.errors import UsageError
from dp_audit.lm_canaries import DIGITS, Alphabet

NEW_TOKEN = "<|secret{:03d}|>"


def alphabet_size(cfg: RunConfig) -> int:
    c = cfg.canaries
    return 10 if c.secret_alphabet == "digits" else (c.alphabet_size or DEFAULT_TOKEN_ALPHABET)


def new_token_symbols(size: int) -> list[str]:
    """``size`` token strings no text contains (``<|secret000|>``, ...)."""
    return [NEW_TOKEN.format(i) for i in range(size)]


def add_new_tokens(tokenizer: Any, symbols: Sequence[str]) -> tuple[int, ...]:
    """Add ``symbols`` to ``tokenizer`` as ordinary (non-special: kept by ``decode``) added tokens;
    each must be new and encode as exactly one token. Returns their ids."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    clash = [s for s in symbols if s in vocab]
    if clash:
        raise UsageError(f"canaries.secret_alphabet = 'new-tokens': the tokenizer already has {clash[0]!r}")
    tokenizer.add_tokens([AddedToken(s, normalized=False, special=False) for s in symbols])
    ids = tuple(int(i) for i in tokenizer.convert_tokens_to_ids(list(symbols)))
    for s, i in zip(symbols, ids):
        got = tokenizer(f"x {s} x", add_special_tokens=False)["input_ids"]
        if got.count(i) != 1 or tokenizer.decode([i]).strip() != s:
            raise UsageError(f"canaries.secret_alphabet = 'new-tokens': {s!r} does not encode as one token")
    return ids


def _one_token_word(tokenizer: Any, token: str, tid: int) -> str | None:
    text = tokenizer.convert_tokens_to_string([token]).strip()
    if len(text) < 2 or not text.isalpha() or not text.isascii():
        return None
    if tokenizer(f" {text}", add_special_tokens=False)["input_ids"] != [tid]:
        return None
    if tokenizer.decode([tid]).strip() != text:
        return None
    return text


def unseen_symbols(tokenizer: Any, split_ids: Sequence[torch.Tensor], *, size: int, template: str) -> list[str]:
    """The ``unseen`` alphabet (module docstring's rule); a UsageError if there are fewer than ``size``."""
    seen: set[int] = set()
    for ids in split_ids:
        seen.update(int(i) for i in torch.unique(ids).tolist())
    special = set(tokenizer.all_special_ids)
    template_words = set(template.replace("{secret}", " ").lower().split())
    found: list[tuple[int, str]] = []
    for token, tid in sorted(tokenizer.get_vocab().items(), key=lambda kv: -kv[1]):
        if tid in seen or tid in special:
            continue
        word = _one_token_word(tokenizer, token, tid)
        if word is None or word.lower() in template_words:
            continue
        found.append((tid, word))
        if len(found) == size:
            return [w for _, w in sorted(found)]
    raise UsageError(f"canaries.secret_alphabet = 'unseen': the tokenizer has only {len(found)} whole-word tokens "
                     f"that no data split uses, need alphabet_size = {size} (lower alphabet_size, or use 'new-tokens')")


def check_absent(split_ids: Sequence[torch.Tensor], token_ids: Sequence[int]) -> None:
    """No split may contain a token of the alphabet (an integrity check of the construction)."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    for x in split_ids:
        if x.numel() and torch.isin(x, ids).any():
            raise UsageError("a data split contains a token of the secret alphabet: the canaries would not be the "
                             "only texts that train it")


def symbol_ids(tokenizer: Any, symbols: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(tokenizer(f" {s}", add_special_tokens=False)["input_ids"][-1]) for s in symbols)


def split_token_ids(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """The distinct token ids of ``texts``, encoded whole (no truncation, no special tokens)."""
    ids = {int(i) for row in tokenizer(list(texts), truncation=False, add_special_tokens=False)["input_ids"]
           for i in row} if len(texts) else set()
    return torch.as_tensor(sorted(ids), dtype=torch.long)


def resolve_alphabet(cfg: RunConfig, tokenizer: Any, texts: Sequence[str]) -> tuple[Alphabet, tuple[int, ...]]:
    """(the secret alphabet, the ids of added tokens): DIGITS (unchanged), new tokens added to
    ``tokenizer`` (in place), or the unseen words of ``tokenizer``; ``texts``: every text of every
    split (train, dev, test, public) without the canaries, checked to contain no symbol."""
    c = cfg.canaries
    if c.secret_alphabet == "digits":
        return DIGITS, ()
    size = alphabet_size(cfg)
    if c.secret_alphabet == "new-tokens":
        symbols = new_token_symbols(size)
        added = add_new_tokens(tokenizer, symbols)
        check_absent([split_token_ids(tokenizer, texts)], added)
        return tuple(symbols), added
    seen = split_token_ids(tokenizer, texts)
    symbols = unseen_symbols(tokenizer, [seen], size=size, template=c.template)
    check_absent([seen], symbol_ids(tokenizer, symbols))
    return tuple(symbols), ()


@torch.no_grad()
def grow_embeddings(model: Any, token_ids: Sequence[int], *, generator: torch.Generator) -> None:
    """Make room for ``token_ids`` in the input (and, if untied, output) embedding table and set
    their rows to mean(old rows) + N(0, initializer_range²) from ``generator``."""
    if not token_ids:
        return
    first, needed = min(token_ids), max(token_ids) + 1
    emb = model.get_input_embeddings()
    if emb.num_embeddings < needed:
        model.resize_token_embeddings(needed, mean_resizing=False)
    std = float(getattr(model.config, "initializer_range", 0.02))
    idx = torch.as_tensor(list(token_ids), dtype=torch.long)
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != tables[0].data_ptr():
        tables.append(out.weight)
    for w in tables:
        mean = w[:first].mean(0)
        noise = torch.randn((len(idx), w.shape[1]), generator=generator, dtype=torch.float32).to(w.dtype)
        w[idx] = mean + std * noise
    if out is not None and getattr(out, "bias", None) is not None and out.bias.shape[0] >= needed:
        out.bias[idx] = out.bias[:first].mean()
