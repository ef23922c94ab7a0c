"""The built-in English task (``[data] task = "english"``): sentiment sentences built from a real
English sentiment lexicon, so that a pretrained English encoder (MiniLM) is useful on it.

Polar words and their valence come from VADER's lexicon (``vader_lexicon.txt``, shipped inside the
``vaderSentiment`` package and read from its files, offline; Hutto & Gilbert 2014): lower-case
alphabetic entries of 4–10 letters with |mean valence| >= 2.0 and rater std <= 1.0 (raters agree),
keeping only word-like entries (vowels; no chat acronyms like "lol"). Filler words are frequent
English words (function words, neutral verbs and nouns, below). Each text is 1–3 clauses
("the service was really awful", "my friends did not enjoy the trip") around a latent
sentiment: most polar words share it, ``not`` flips the next one, the label is the sign of the
summed effective valence (ties: the latent sentiment), then a ``label_noise`` flip.

Splits as in :mod:`dp_audit.trainers.data`: ``public`` (general topics: never private),
``train`` (the private split), ``dev`` and ``test`` (the private domain). Domain shift: the private
domain talks about other things (its own nouns) and a fraction ``domain_shift`` of the polar words
occurs only there (never in the public split). Everything is drawn from one seeded generator;
splits are disjoint as texts. The pseudo-word task stays the default (``task = "pseudo"``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from dp_audit.config import DataConfig
from dp_audit.errors import UsageError
from dp_audit.io import canonical_fingerprint
from dp_audit.trainers.data import Split, TaskData, _choice_cdf, add_text

LEXICON_PACKAGE, LEXICON_FILE = "vaderSentiment", "vader_lexicon.txt"
MIN_VALENCE, MAX_STD = 2.0, 1.0
NEGATION = "not"
ZIPF = 1.0  # word-frequency exponent: a few hundred polar words carry most of the text, as in real reviews

# frequent English words, neutral in VADER (none of them is in its lexicon; tested)
DETERMINERS = ("the", "this", "that", "my", "our", "their", "his", "her", "a", "every")
BE = ("was", "is", "seemed", "felt", "looked", "sounded", "became", "stayed")
DO = ("did", "does", "will", "would", "could")
ADVERBS = ("really", "very", "quite", "so", "just", "also", "still", "always", "rather", "somewhat")
FILLERS = ("today", "again", "at first", "in the end", "for us", "to me", "this time", "as usual",
           "on sunday", "last night", "after all", "for a while", "overall", "", "", "")
CONNECTIVES = ("and", "but", "so", "while", "because", "although")
PUBLIC_NOUNS = ("day", "week", "weather", "city", "street", "neighbor", "news", "game", "team", "school",
                "teacher", "class", "family", "house", "garden", "car", "train", "road", "morning",
                "evening", "letter", "meeting", "office", "job", "trip", "visit",
                "weekend", "phone", "music", "song", "picture", "story", "river")
PRIVATE_NOUNS = ("movie", "film", "plot", "actor", "ending", "scene", "director", "script", "cast",
                 "soundtrack", "hotel", "room", "staff", "service", "restaurant", "food", "meal",
                 "waiter", "menu", "product", "price", "delivery", "book", "author", "chapter",
                 "album", "show", "episode", "series", "app", "screen", "battery", "camera")
SUBJECTS = ("i", "we", "they", "my sister", "the kids", "my parents", "everyone", "people")


@functools.lru_cache(maxsize=1)
def lexicon() -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(words, mean valence) of the selected VADER entries, in file order."""
    from importlib import resources

    try:
        text = (resources.files(LEXICON_PACKAGE) / LEXICON_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise UsageError(f"data.task = 'english' needs the {LEXICON_PACKAGE} package "
                         f"(pip install vaderSentiment): {exc}") from None
    words, valence = [], []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        w = parts[0]
        try:
            mean, std = float(parts[1]), float(parts[2])
        except ValueError:
            continue
        if _wordlike(w) and abs(mean) >= MIN_VALENCE and std <= MAX_STD:
            words.append(w)
            valence.append(mean)
    return tuple(words), tuple(valence)


def _wordlike(w: str) -> bool:
    """A dictionary-like word: ASCII lower-case letters, 4–10 long, at least a quarter vowels,
    no letter three times in a row (drops chat acronyms and spellings like "sooo")."""
    if not (w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 10):
        return False
    if sum(c in "aeiou" for c in w) < len(w) / 4:
        return False
    return not any(w[i] == w[i + 1] == w[i + 2] for i in range(len(w) - 2))


def _zipf(n: int, *, rng: np.random.Generator) -> np.ndarray:
    """Word frequencies: Zipf-like weights over a seeded ranking (like the pseudo task)."""
    w = np.empty(n)
    w[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** ZIPF
    return w / w.sum()


def _clause(polar: str, negated: bool, *, nouns: Sequence[str], rng: np.random.Generator) -> list[str]:
    """One clause around one polar word (VADER's entries mix adjectives, nouns and verbs, so the
    frames are loose English; an encoder reads the polar word and the negation)."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    neg = [NEGATION] if negated else []
    adv = [pick(ADVERBS)] if rng.random() < 0.4 else []
    frame = int(rng.integers(3))
    if frame == 0:  # the plot was really awful
        words = [pick(DETERMINERS), pick(nouns), pick(BE), *neg, *adv, polar]
    elif frame == 1:  # my friends did not love the trip
        words = [pick(SUBJECTS), pick(DO), *neg, *adv, polar, pick(DETERMINERS), pick(nouns)]
    else:  # it was not a disaster for us
        words = ["it", pick(BE), *neg, *adv, polar]
    filler = pick(FILLERS)
    return words + (filler.split() if filler else [])


def _sample_split(n: int, cfg: DataConfig, *, rng: np.random.Generator, words: Sequence[str], valence: np.ndarray,
                  freq: np.ndarray, nouns: Sequence[str], taken: set[str]) -> Split:
    groups = {s: np.flatnonzero(np.sign(valence) == s) for s in (-1, 1)}
    probs = {s: freq[g] / freq[g].sum() for s, g in groups.items()}
    cdfs = {s: _choice_cdf(p) for s, p in probs.items()}  # = rng.choice(len(g), p=p), stream included
    texts: list[str] = []
    labels: list[int] = []
    while len(texts) < n:
        sentiment = 1 if rng.random() < 0.5 else -1
        target = int(rng.integers(cfg.min_words, cfg.max_words + 1))
        out: list[str] = []
        score = 0.0
        while len(out) < target or not out:
            s = sentiment if rng.random() < 0.8 else -sentiment
            k = int(groups[s][cdfs[s].searchsorted(rng.random(), side="right")])
            negated = rng.random() < 0.15
            score += -valence[k] if negated else valence[k]
            if out:
                out.append(CONNECTIVES[int(rng.integers(len(CONNECTIVES)))])
            out.extend(_clause(words[k], negated, nouns=nouns, rng=rng))
        add_text(" ".join(out), score, sentiment, rng=rng, label_noise=cfg.label_noise, taken=taken, texts=texts,
                 labels=labels)
    return Split(texts=tuple(texts), labels=tuple(labels))


def make_english_task(cfg: DataConfig) -> TaskData:
    words, val = lexicon()
    valence = np.asarray(val, dtype=float)
    rng = np.random.default_rng(cfg.seed)
    freq = _zipf(len(words), rng=rng)
    private_only = rng.random(len(words)) < cfg.domain_shift  # the shifted part of the lexicon
    public_freq = np.where(private_only, 0.0, freq)
    taken: set[str] = set()
    splits = {}
    for name, n in (("public", cfg.n_public), ("train", cfg.n_train), ("dev", cfg.n_dev), ("test", cfg.n_test)):
        public = name == "public"
        splits[name] = _sample_split(n, cfg, rng=rng, words=words, valence=valence,
                                     freq=public_freq if public else freq,
                                     nouns=PUBLIC_NOUNS if public else PRIVATE_NOUNS, taken=taken)
    fp = canonical_fingerprint({"task": "english", "texts": list(splits["train"].texts),
                                "labels": list(splits["train"].labels)})
    # vocab: the words canaries are drawn from (mislabelled-random / rare-token): frequent filler
    # and polar words, so canary texts look like the data
    vocab = tuple(dict.fromkeys([*DETERMINERS, *BE, *ADVERBS, *PUBLIC_NOUNS, *PRIVATE_NOUNS, *words]))
    sign = {w: int(np.sign(v)) for w, v in zip(words, valence)}
    polarity = tuple(sign.get(w, 0) for w in vocab)
    return TaskData(vocab=vocab, polarity=polarity, fingerprint=fp, **splits)
