"""The built-in generation task (``[data] task = "generation"``): record-like English notes for
causal language models (docs/language-models.md).

Each text is one short note built from a frame and slots, e.g. "patient anna visited on monday ,
her blood pressure was normal" or "customer tom called on friday , his order was shipped".
Names, weekdays, pronouns, function words and digits are shared by every split.

Domain shift: the ``public`` split (pretraining of the tiny GPT-2 and its tokenizer; never
private) holds office and shop notes (orders, rooms, door codes, deliveries); the private domain
(``train``, ``dev``, ``test``) holds clinic notes (visits, vitals, symptoms, medication doses).
Both use digits written one per word ("room 4 1 2", "dose 2 0 mg"), so the digits of secret
canaries are tokens the pretrained model knows, and the public split also has "my pin code is"
phrases, so the default canary template ("my pin code is {secret}") is in-vocabulary.

Everything is drawn from one seeded generator; the splits are disjoint as texts. Labels are 0
(a language model has none). ``data.min_words`` / ``max_words`` are not used (each frame has its
own length, 8 to 22 words); ``data.label_noise`` and ``domain_shift`` neither (the shift is the
change of frames).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from dp_audit.config import DataConfig
from dp_audit.io import canonical_fingerprint
from dp_audit.trainers.data import Split, TaskData

NAMES = ("anna", "tom", "maria", "james", "lena", "omar", "sofia", "david", "nina", "paul", "emma", "leo", "clara",
         "ben", "julia", "sam", "rosa", "karl", "ivy", "max", "eva", "noah", "mia", "hugo", "zoe", "felix", "lily",
         "oscar", "ruth", "adam")
FEMALE = {"anna", "maria", "lena", "sofia", "nina", "emma", "clara", "julia", "rosa", "ivy", "eva", "mia", "zoe",
          "lily", "ruth"}
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
TIMES = ("morning", "afternoon", "evening")

# the private domain: clinic notes
VITALS = ("blood pressure", "heart rate", "temperature", "blood sugar", "weight", "oxygen level")
VITAL_STATUS = ("normal", "high", "low", "stable", "slightly high", "slightly low")
SYMPTOMS = ("headache", "cough", "fever", "back pain", "rash", "sore throat", "dizziness", "fatigue", "knee pain",
            "allergy")
DRUGS = ("ibuprofen", "paracetamol", "amoxicillin", "insulin", "aspirin", "vitamin d", "an inhaler", "eye drops")
TESTS = ("blood test", "x ray", "scan", "urine test", "allergy test")
RESULTS = ("normal", "clear", "positive", "negative", "fine")
DOCTORS = ("doctor", "nurse")

# the public domain: office and shop notes
ORDER_STATUS = ("shipped", "delayed", "cancelled", "delivered", "returned", "confirmed")
ITEMS = ("chair", "lamp", "printer", "desk", "book", "phone", "laptop", "parcel", "bicycle", "kettle")
PLACES = ("office", "garage", "storage", "front", "back", "gym", "kitchen")
DEVICES = ("phone", "laptop", "card", "account", "tablet")
DOCS = ("invoice", "report", "contract", "letter", "receipt", "schedule")

Frame = Callable[[np.random.Generator], str]


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _digits(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(str(int(d)) for d in rng.integers(0, 10, size=int(rng.integers(lo, hi + 1))))


def _person(rng: np.random.Generator) -> tuple[str, str]:
    name = _pick(rng, NAMES)
    return name, ("her" if name in FEMALE else "his")


def _clinic_frames() -> tuple[Frame, ...]:
    def visit(r):
        n, p = _person(r)
        return f"patient {n} visited on {_pick(r, DAYS)} , {p} {_pick(r, VITALS)} was {_pick(r, VITAL_STATUS)}"

    def saw(r):
        n, p = _person(r)
        return f"{n} saw the {_pick(r, DOCTORS)} on {_pick(r, DAYS)} {_pick(r, TIMES)} about {p} {_pick(r, SYMPTOMS)}"

    def drug(r):
        n, p = _person(r)
        return (f"patient {n} was given {_pick(r, DRUGS)} for {p} {_pick(r, SYMPTOMS)} , dose {_digits(r, 1, 3)} mg "
                f"twice a day")

    def result(r):
        n, p = _person(r)
        return f"the {_pick(r, TESTS)} of {n} came back {_pick(r, RESULTS)} on {_pick(r, DAYS)}"

    def noted(r):
        n, p = _person(r)
        return f"the nurse noted that {n} has {_pick(r, SYMPTOMS)} since {_pick(r, DAYS)} and {p} {_pick(r, VITALS)} " \
               f"is {_pick(r, VITAL_STATUS)}"

    def next_visit(r):
        n, p = _person(r)
        return f"{n} will come back on {_pick(r, DAYS)} , {p} room is {_digits(r, 2, 3)}"

    return visit, saw, drug, result, noted, next_visit


def _office_frames() -> tuple[Frame, ...]:
    def called(r):
        n, p = _person(r)
        return f"customer {n} called on {_pick(r, DAYS)} , {p} order was {_pick(r, ORDER_STATUS)}"

    def room(r):
        n, _ = _person(r)
        return f"{n} booked room {_digits(r, 2, 3)} for {_pick(r, DAYS)} {_pick(r, TIMES)}"

    def door(r):
        return f"the code for the {_pick(r, PLACES)} door is {_digits(r, 4, 6)}"

    def pin(r):
        n, p = _person(r)
        return f"{n} wrote about the {_pick(r, DEVICES)} : my pin code is {_digits(r, 4, 6)} , call me on {_pick(r, DAYS)}"

    def sent(r):
        n, p = _person(r)
        return f"{n} sent the {_pick(r, DOCS)} to {_pick(r, NAMES)} on {_pick(r, DAYS)}"

    def arrive(r):
        n, p = _person(r)
        return f"the {_pick(r, ITEMS)} ordered by {n} will arrive on {_pick(r, DAYS)} , order number {_digits(r, 3, 5)}"

    return called, room, door, pin, sent, arrive


def _sample(n: int, frames: Sequence[Frame], *, rng: np.random.Generator, taken: set[str]) -> Split:
    texts: list[str] = []
    while len(texts) < n:
        text = frames[int(rng.integers(len(frames)))](rng)
        if text in taken:
            continue
        taken.add(text)
        texts.append(text)
    return Split(texts=tuple(texts), labels=(0,) * n)


def make_generation_task(cfg: DataConfig) -> TaskData:
    rng = np.random.default_rng(cfg.seed)
    taken: set[str] = set()
    splits = {"public": _sample(cfg.n_public, _office_frames(), rng=rng, taken=taken)}
    for name, n in (("train", cfg.n_train), ("dev", cfg.n_dev), ("test", cfg.n_test)):
        splits[name] = _sample(n, _clinic_frames(), rng=rng, taken=taken)
    fp = canonical_fingerprint({"task": "generation", "texts": list(splits["train"].texts)})
    vocab = tuple(sorted({w for s in splits.values() for t in s.texts for w in t.split() if w.isalpha()}))
    return TaskData(vocab=vocab, polarity=(0,) * len(vocab), fingerprint=fp, num_labels=1, **splits)
