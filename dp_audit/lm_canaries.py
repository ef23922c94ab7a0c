"""Text canaries for language models (DESIGN.md §5) and candidate secrets for exposure.

Every generator returns plain dicts ``{"id", "text", "label", "member"}`` (the canaries.jsonl line
of docs/formats.md; ``label`` is 0 for language models). Membership is drawn first, one
Bernoulli(1/2) per canary from ``rng``, then the content: the same seed gives the same canaries.

- ``make_secret_canaries``: a template with a random secret, e.g. "my PIN is 3 9 1 4 0 2"
  (Carlini et al. 2019, "The Secret Sharer"); symbols are separated by spaces so that every
  tokenizer splits them into one token each. The alphabet is the ten digits by default, or any
  sequence of distinct symbols (e.g. tokens added to the vocabulary for the canaries,
  ``dp_audit.trainers.secret_alphabet``).
- ``secret_candidates``: K candidate texts with i.i.d. uniform secrets from the same template,
  drawn with replacement and independently of the canaries (what makes the exposure bound of
  ``dp_audit.attacks.exposure`` valid: do not filter out the canaries' own secrets).
- ``make_rare_token_canaries``: sequences of tokens drawn uniformly from a list of rare tokens
  (e.g. the tail of the tokenizer's vocabulary): input-space canaries with no natural context.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from dp_audit.errors import UsageError

DEFAULT_TEMPLATE = "my PIN is {secret}"
DIGITS = "0123456789"
Alphabet = Union[str, Sequence[str]]  # a string of one-character symbols, or a list of symbols


def _check_template(template: str) -> None:
    if template.count("{secret}") != 1:
        raise UsageError(f"secret template must contain '{{secret}}' exactly once, got {template!r}")


def _membership(m: int, rng: np.random.Generator) -> np.ndarray:
    if m < 1:
        raise UsageError(f"need at least one canary, got m={m}")
    return rng.random(m) < 0.5


def check_alphabet(alphabet: Alphabet) -> None:
    """A string of single-character symbols (legacy) or a sequence of distinct non-empty symbols
    without whitespace (each symbol is one word of the secret)."""
    if isinstance(alphabet, str):
        ok = len(set(alphabet)) == len(alphabet) and not any(ch.isspace() for ch in alphabet)
    else:
        ok = all(isinstance(x, str) and x and x.split() == [x] for x in alphabet)
        ok = ok and len(set(alphabet)) == len(alphabet)
    if not ok or len(alphabet) < 2:
        raise UsageError("secrets need an alphabet of at least 2 distinct symbols without whitespace")


def _secrets(k: int, rng: np.random.Generator, *, n_digits: int, alphabet: Alphabet) -> list[str]:
    if n_digits < 1:
        raise UsageError("secrets need n_digits >= 1 and an alphabet of at least 2 distinct symbols")
    check_alphabet(alphabet)
    draws = rng.integers(0, len(alphabet), size=(k, n_digits))
    return [" ".join(alphabet[j] for j in row) for row in draws]


def secret_space_size(*, n_digits: int = 6, alphabet: Alphabet = DIGITS) -> int:
    """|R|: the number of distinct secrets."""
    return len(alphabet) ** n_digits


def make_secret_canaries(
    m: int,
    *,
    rng: np.random.Generator,
    template: str = DEFAULT_TEMPLATE,
    n_digits: int = 6,
    alphabet: Alphabet = DIGITS,
    id_prefix: str = "secret",
) -> list[dict]:
    """m canaries ``template.format(secret=...)`` with uniform random secrets."""
    _check_template(template)
    member = _membership(m, rng)
    secrets = _secrets(m, rng, n_digits=n_digits, alphabet=alphabet)
    return [{"id": f"{id_prefix}{i:05d}", "text": template.format(secret=s), "label": 0, "member": bool(member[i])}
            for i, s in enumerate(secrets)]


def secret_candidates(
    k: int,
    *,
    rng: np.random.Generator,
    template: str = DEFAULT_TEMPLATE,
    n_digits: int = 6,
    alphabet: Alphabet = DIGITS,
) -> list[str]:
    """K candidate texts with i.i.d. uniform secrets (with replacement) for exposure.

    Use a generator independent of the one that drew the canaries (e.g. a separate seed)."""
    _check_template(template)
    if k < 1:
        raise UsageError(f"need at least one candidate, got k={k}")
    return [template.format(secret=s) for s in _secrets(k, rng, n_digits=n_digits, alphabet=alphabet)]


def make_rare_token_canaries(
    m: int,
    *,
    rng: np.random.Generator,
    vocab: Sequence[str],
    n_tokens: int = 8,
    id_prefix: str = "rare",
) -> list[dict]:
    """m canaries of ``n_tokens`` tokens drawn uniformly (with replacement) from ``vocab``."""
    vocab = list(vocab)
    if len(vocab) < 2 or n_tokens < 1:
        raise UsageError("rare-token canaries need a vocabulary of at least 2 tokens and n_tokens >= 1")
    member = _membership(m, rng)
    words = rng.integers(0, len(vocab), size=(m, n_tokens))
    return [{"id": f"{id_prefix}{i:05d}", "text": " ".join(vocab[j] for j in words[i]), "label": 0,
             "member": bool(member[i])} for i in range(m)]
