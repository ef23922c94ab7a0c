"""The built-in task: a deterministic synthetic sentiment-like text classification data set.

Words carry a hidden polarity (+1, -1 or 0); ``not`` flips the next word; the label is the sign
of the summed polarity, with a small rate of label noise. Splits: ``public`` (tokenizer and
backbone pretraining; never private), ``train`` (the private split), ``dev`` and ``test``.
All splits are drawn from one seeded generator and are disjoint as texts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dp_audit.config import DataConfig
from dp_audit.io import canonical_fingerprint

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr", "pl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
NEGATION = "not"


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TaskData:
    vocab: tuple[str, ...]
    polarity: tuple[int, ...]
    public: Split
    train: Split
    dev: Split
    test: Split
    fingerprint: str  # sha256 of the private train split (recorded in the manifest)

    def split(self, name: str) -> Split:
        return getattr(self, name)


def make_vocab(size: int, *, rng: np.random.Generator) -> list[str]:
    """Pronounceable pseudo-words, unique, deterministic for a seed."""
    words: list[str] = []
    seen = {NEGATION}
    while len(words) < size:
        n_syll = int(rng.integers(2, 4))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(n_syll))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _sample_split(
    n: int, cfg: DataConfig, *, rng: np.random.Generator, vocab: Sequence[str], pol: np.ndarray, taken: set[str]
) -> Split:
    probs = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8  # Zipf-like word frequencies
    probs /= probs.sum()
    texts: list[str] = []
    labels: list[int] = []
    while len(texts) < n:
        length = int(rng.integers(cfg.min_words, cfg.max_words + 1))
        idx = rng.choice(len(vocab), size=length, p=probs)
        negate = rng.random(length) < 0.12
        words: list[str] = []
        score = 0.0
        for j, k in enumerate(idx):
            if negate[j] and pol[k] != 0:
                words.append(NEGATION)
                score -= pol[k]
            else:
                score += pol[k]
            words.append(vocab[k])
        text = " ".join(words)
        if text in taken:
            continue
        taken.add(text)
        label = int(score > 0) if score != 0 else int(rng.integers(2))
        if rng.random() < cfg.label_noise:
            label = 1 - label
        texts.append(text)
        labels.append(label)
    return Split(texts=tuple(texts), labels=tuple(labels))


def make_task(cfg: DataConfig) -> TaskData:
    rng = np.random.default_rng(cfg.seed)
    vocab = make_vocab(cfg.vocab_size, rng=rng)
    u = rng.random(len(vocab))
    pol = np.where(u < 0.2, 1, np.where(u < 0.4, -1, 0)).astype(int)
    taken: set[str] = set()
    splits = {
        name: _sample_split(n, cfg, rng=rng, vocab=vocab, pol=pol, taken=taken)
        for name, n in (("public", cfg.n_public), ("train", cfg.n_train), ("dev", cfg.n_dev), ("test", cfg.n_test))
    }
    fp = canonical_fingerprint({"texts": list(splits["train"].texts), "labels": list(splits["train"].labels)})
    return TaskData(vocab=tuple(vocab), polarity=tuple(int(p) for p in pol), fingerprint=fp, **splits)


def with_canaries(split: Split, texts: Sequence[str], labels: Sequence[int]) -> Split:
    """The private split with member canaries appended (the trainer shuffles by sampling)."""
    return dataclasses.replace(split, texts=split.texts + tuple(texts), labels=split.labels + tuple(int(x) for x in labels))
