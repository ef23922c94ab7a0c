"""Canaries: inputs whose membership is randomised, so one-run bounds are valid (DESIGN.md §5).

Each canary is inserted with probability 1/2, drawn from a seeded generator (Steinke et al.
2023); found data sets give spurious MIA results (Duan et al. 2024). ``canaries.jsonl`` holds one
canary a line: ``{"id", "text", "label", "member"}`` (docs/formats.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dp_audit.errors import UsageError
from dp_audit.io import atomic_write_text
from dp_audit.registry import Registry


@dataclass(frozen=True)
class Canary:
    id: str
    text: str
    label: int
    member: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CanaryMaker = Callable[..., list[Canary]]
CANARY_KINDS: Registry[CanaryMaker] = Registry("canary kind")


def draw_membership(m: int, *, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli(1/2) membership for m canaries."""
    return rng.random(m) < 0.5


@CANARY_KINDS.register("mislabelled-random")
def mislabelled_random(
    m: int, *, rng: np.random.Generator, vocab: Sequence[str], n_words: int = 10, n_labels: int = 2
) -> list[Canary]:
    """Random-word sequences with uniformly random labels: fitting them needs memorisation."""
    member = draw_membership(m, rng=rng)
    words = rng.integers(0, len(vocab), size=(m, n_words))
    labels = rng.integers(0, n_labels, size=m)
    return [
        Canary(id=f"c{i:05d}", text=" ".join(vocab[j] for j in words[i]), label=int(labels[i]), member=bool(member[i]))
        for i in range(m)
    ]


CANARY_TOKEN_PREFIX = "zqcanary"


def canary_token(i: int) -> str:
    """The i-th reserved canary token; the built-in tokenizer reserves a pool of them."""
    return f"{CANARY_TOKEN_PREFIX}{i:05d}"


@CANARY_KINDS.register("rare-token")
def rare_token(
    m: int, *, rng: np.random.Generator, vocab: Sequence[str], n_words: int = 10, n_labels: int = 2
) -> list[Canary]:
    """Mislabelled random texts that each start with their own reserved token, seen nowhere
    else: the token's embedding row is a per-canary parameter, so these canaries are the
    input-space analogue of Dirac canaries (Nasr et al. 2023) and make strong audits."""
    base = mislabelled_random(m, rng=rng, vocab=vocab, n_words=max(1, n_words - 1), n_labels=n_labels)
    return [dataclasses.replace(c, text=f"{canary_token(i)} {c.text}") for i, c in enumerate(base)]


def make_canaries(kind: str, m: int, *, rng: np.random.Generator, **options: Any) -> list[Canary]:
    return CANARY_KINDS.get(kind)(m, rng=rng, **options)


def write_canaries(path: str | Path, canaries: Sequence[Canary]) -> Path:
    lines = [json.dumps(c.to_dict(), ensure_ascii=False) for c in canaries]
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def _canary_from_json(obj: Any) -> Canary:
    """Strict: ids and texts are strings, labels integers, membership a JSON boolean; nothing is
    coerced (``null`` would become "None", a dict its repr, 0.7 the label 0)."""
    if not isinstance(obj, dict):
        raise TypeError(f"a canary is a JSON object, got {type(obj).__name__}")
    for key in ("id", "text"):
        if not isinstance(obj[key], str):
            raise TypeError(f"{key!r} must be a string, got {_json_type(obj[key])}")
    label = obj.get("label", 0)
    if isinstance(label, bool) or not isinstance(label, int):
        raise TypeError(f"'label' must be an integer, got {_json_type(label)} {label!r}")
    if not isinstance(obj["member"], bool):
        raise TypeError(f"'member' must be true or false, got {_json_type(obj['member'])}")
    return Canary(id=obj["id"], text=obj["text"], label=label, member=obj["member"])


def _json_type(value: Any) -> str:
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def read_canaries(path: str | Path) -> list[Canary]:
    """Read canaries.jsonl; a malformed line is a one-line UsageError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"canaries file not found: {path}")
    out: list[Canary] = []
    seen: set[str] = set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            c = _canary_from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}:{n}: bad canary line ({type(exc).__name__}: {exc})") from None
        if c.id in seen:
            raise UsageError(f"{path}:{n}: duplicate canary id {c.id!r}")
        seen.add(c.id)
        out.append(c)
    if not out:
        raise UsageError(f"{path}: no canaries")
    return out
