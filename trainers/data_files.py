"""Your own data: text-classification splits read from csv, jsonl, parquet or a ``datasets``
``save_to_disk`` folder (``[data] source``), validated, returned as the same :class:`TaskData`
as the built-in task, so canaries are inserted into the private split exactly as for it.

Splits: ``train`` is the private split (required); ``dev`` and ``test`` are files, or a seeded cut
of ``train`` (``dev_fraction``, ``test_fraction``, ``seed``) when not given; ``public`` is a file or
none. For ``hf-disk``, ``train`` may be a ``DatasetDict`` folder: its ``train`` split is the private
split and its ``validation``/``dev``, ``test`` and ``public`` splits fill the roles not given.

Validation (each a one-line :class:`UsageError`, exit 2): a missing file or column, a corrupt file
(the jsonl line number), an empty or non-string text, a missing (NaN) label, a label that is not an
integer in 0..K−1 (K = ``num_labels``, or inferred as the largest label + 1), an empty split, two
roles given the same path. Nothing is written before the data is valid.

The fingerprint (manifest ``data_fingerprint``) is the sha256 of the private split's canonical
content together with the sha256 of every file read and the cut; ``TaskData.source`` lists the
files with their hashes (manifest ``notes.data``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dp_audit.config import DataConfig
from dp_audit.errors import UsageError
from dp_audit.io import canonical_fingerprint, sha256_file
from dp_audit.trainers.data import Split, TaskData

ROLES = ("train", "dev", "test", "public")
_DICT_SPLITS = {"train": ("train",), "dev": ("validation", "dev"), "test": ("test",), "public": ("public",)}
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Columns:
    """The text and label columns of one split, as read, and where each row came from."""

    texts: list[Any]
    labels: list[Any]
    locate: Callable[[int], str]  # row index -> "line 7" / "row 7"
    sha256: str
    path: str


# --------------------------------------------------------------------------- readers

def _need_columns(path: Path, available: list[str], cfg: DataConfig) -> None:
    for key, col in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if col not in available:
            raise UsageError(f"{path}: no column {col!r} (data.{key}); columns: {', '.join(map(str, available)) or 'none'}")


def read_csv(path: Path, cfg: DataConfig) -> Columns:
    """Every field read as a string (no NaN guessing: a text "NA" stays a text); labels parsed here."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path}: empty CSV file (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: cannot parse CSV: {_one_line(exc)}") from None
    _need_columns(path, list(df.columns), cfg)
    labels = [_csv_label(v) for v in df[cfg.label_column].tolist()]
    return Columns(df[cfg.text_column].tolist(), labels, lambda i: f"row {i + 1}", sha256_file(path), str(path))


def _csv_label(v: str) -> Any:
    s = v.strip()
    if s == "" or s.lower() in ("nan", "na", "null", "none"):
        return None
    return int(s) if _INT.fullmatch(s) else v


def read_jsonl(path: Path, cfg: DataConfig) -> Columns:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    texts: list[Any] = []
    labels: list[Any] = []
    lines: list[int] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}")
        for key, col in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
            if col not in obj:
                raise UsageError(f"{path}: line {n}: no column {col!r} (data.{key})")
        texts.append(obj[cfg.text_column])
        labels.append(obj[cfg.label_column])
        lines.append(n)
    return Columns(texts, labels, lambda i: f"line {lines[i]}", sha256_file(path), str(path))


def read_parquet(path: Path, cfg: DataConfig) -> Columns:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        _need_columns(path, names, cfg)
        table = pq.read_table(path, columns=[cfg.text_column, cfg.label_column])
    except UsageError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read parquet file: {_one_line(exc)}") from None
    return Columns(table.column(cfg.text_column).to_pylist(), table.column(cfg.label_column).to_pylist(),
                   lambda i: f"row {i + 1}", sha256_file(path), str(path))


def load_hf_disk(path: Path) -> Any:
    """``datasets.load_from_disk`` (Arrow files and JSON metadata; nothing is executed)."""
    import datasets

    if not path.is_dir():
        raise UsageError(f"{path}: data.source = 'hf-disk' needs a datasets.save_to_disk folder, not a file")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError (not a save_to_disk folder), ArrowInvalid (corrupt) ...
        raise UsageError(f"{path}: cannot load a datasets.save_to_disk folder: {_one_line(exc)}") from None


def hf_columns(ds: Any, path: Path, cfg: DataConfig, *, split: str | None = None) -> Columns:
    where = f"{path}[{split}]" if split else str(path)
    _need_columns(Path(where), list(ds.column_names), cfg)
    return Columns(list(ds[cfg.text_column]), list(ds[cfg.label_column]), lambda i: f"row {i + 1}",
                   _hash_folder(path), where)


def _hash_folder(path: Path) -> str:
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return canonical_fingerprint({str(f.relative_to(path)): sha256_file(f) for f in files})


READERS: dict[str, Callable[[Path, DataConfig], Columns]] = {"csv": read_csv, "jsonl": read_jsonl,
                                                              "parquet": read_parquet}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return first[:240]


# --------------------------------------------------------------------------- validation

def validate_split(role: str, cols: Columns) -> tuple[list[str], list[int]]:
    """Texts (non-empty strings) and labels (integers >= 0); the first bad value is a UsageError."""
    where = f"data.{role} ({cols.path})"
    if not cols.texts:
        raise UsageError(f"{where}: the split has no rows")
    texts: list[str] = []
    labels: list[int] = []
    for i, (t, y) in enumerate(zip(cols.texts, cols.labels)):
        if t is None or (isinstance(t, float) and math.isnan(t)):
            raise UsageError(f"{where}: {cols.locate(i)}: missing text (null/NaN)")
        if not isinstance(t, str):
            raise UsageError(f"{where}: {cols.locate(i)}: text must be a string, got {type(t).__name__} {t!r}"[:300])
        if not t.strip():
            raise UsageError(f"{where}: {cols.locate(i)}: empty text")
        if y is None or (isinstance(y, float) and math.isnan(y)):
            raise UsageError(f"{where}: {cols.locate(i)}: missing label (null/NaN)")
        if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer)):
            raise UsageError(f"{where}: {cols.locate(i)}: label must be an integer class index, got "
                             f"{type(y).__name__} {y!r} (map label names to 0..K-1 first)"[:300])
        if y < 0:
            raise UsageError(f"{where}: {cols.locate(i)}: label {int(y)} is negative (labels are 0..K-1)")
        texts.append(t)
        labels.append(int(y))
    return texts, labels


def _check_range(splits: dict[str, tuple[list[str], list[int]]], cols: dict[str, Columns], k: int) -> None:
    for role, (_, labels) in splits.items():
        for i, y in enumerate(labels):
            if y >= k:
                raise UsageError(f"data.{role} ({cols[role].path}): {cols[role].locate(i)}: label {y} is not in "
                                 f"0..{k - 1} (data.num_labels = {k})")


# --------------------------------------------------------------------------- assembly

def _read_roles(cfg: DataConfig) -> dict[str, Columns]:
    given = {r: getattr(cfg, r) for r in ROLES if getattr(cfg, r)}
    seen: dict[Path, str] = {}
    for role, p in given.items():
        path = Path(p).expanduser()
        if not path.exists():
            raise UsageError(f"data.{role}: file not found: {p}")
        key = path.resolve()
        if key in seen:
            raise UsageError(f"data.{role} and data.{seen[key]} are the same path ({p}): give each split its own "
                             "file (or leave dev/test empty to cut them from train)")
        seen[key] = role
    out: dict[str, Columns] = {}
    if cfg.source == "hf-disk":
        for role, p in given.items():
            path = Path(p).expanduser()
            obj = load_hf_disk(path)
            if hasattr(obj, "column_names") and not isinstance(obj.column_names, dict):
                out[role] = hf_columns(obj, path, cfg)
                continue
            if role != "train":
                raise UsageError(f"data.{role}: {p} is a DatasetDict; only data.train may be one (its splits fill "
                                 "train, dev, test and public)")
            names = list(obj.keys())
            for r, candidates in _DICT_SPLITS.items():
                name = next((c for c in candidates if c in obj), None)
                if r == "train" and name is None:
                    raise UsageError(f"data.train: the DatasetDict {p} has no 'train' split (splits: {', '.join(names)})")
                if name is not None and (r == "train" or r not in given):
                    out[r] = hf_columns(obj[name], path, cfg, split=name)
        return out
    reader = READERS[cfg.source]
    for role, p in given.items():
        path = Path(p).expanduser()
        if path.is_dir():
            raise UsageError(f"data.{role}: {p} is a folder; data.source = {cfg.source!r} reads a file")
        out[role] = reader(path, cfg)
    return out


def _cut(n: int, cfg: DataConfig, *, need_dev: bool, need_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded cut of the given train split into (train, dev, test) indices for the missing splits."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_test = int(round(cfg.test_fraction * n)) if need_test else 0
    n_dev = int(round(cfg.dev_fraction * n)) if need_dev else 0
    for role, k, frac in (("test", n_test, "test_fraction"), ("dev", n_dev, "dev_fraction")):
        if (need_test if role == "test" else need_dev) and k < 1:
            raise UsageError(f"data.{role} is not given and data.{frac} = {getattr(cfg, frac)} of {n} training rows "
                             f"gives no {role} example: give data.{role} or raise data.{frac}")
    if n - n_test - n_dev < 1:
        raise UsageError(f"data.dev_fraction + data.test_fraction leave no training row of {n}")
    test, dev, train = perm[:n_test], perm[n_test:n_test + n_dev], perm[n_test + n_dev:]
    return np.sort(train), np.sort(dev), np.sort(test)


def canary_vocab(texts: list[str]) -> tuple[str, ...]:
    """Alphabetic words of the public split, sorted: the words random canaries are made of (never
    words of the private split: canaries.jsonl is released with the run)."""
    return tuple(sorted({w for t in texts for w in t.split() if w.isalpha()}))


def load_task_files(cfg: DataConfig) -> TaskData:
    cols = _read_roles(cfg)
    checked = {role: validate_split(role, c) for role, c in cols.items()}
    k = cfg.num_labels or max(2, 1 + max(y for _, labels in checked.values() for y in labels))
    _check_range(checked, cols, k)
    texts, labels = checked["train"]
    cut = None
    if "dev" not in checked or "test" not in checked:
        tr, dv, te = _cut(len(texts), cfg, need_dev="dev" not in checked, need_test="test" not in checked)
        pick = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
        if "dev" not in checked:
            checked["dev"] = pick(dv)
        if "test" not in checked:
            checked["test"] = pick(te)
        checked["train"] = pick(tr)
        cut = {"seed": cfg.seed, "dev_fraction": cfg.dev_fraction if "dev" not in cols else None,
               "test_fraction": cfg.test_fraction if "test" not in cols else None}
    splits = {r: Split(texts=tuple(checked[r][0]), labels=tuple(checked[r][1])) if r in checked
              else Split(texts=(), labels=()) for r in ROLES}
    files = {r: {"path": c.path, "sha256": c.sha256, "rows": len(c.texts)} for r, c in cols.items()}
    source = {"source": cfg.source, "files": files, "cut": cut, "num_labels": k,
              "sizes": {r: len(s) for r, s in splits.items()}}
    fp = canonical_fingerprint({"texts": list(splits["train"].texts), "labels": list(splits["train"].labels),
                                "files": {r: f["sha256"] for r, f in files.items()}, "cut": cut})
    vocab = canary_vocab(list(splits["public"].texts))
    return TaskData(vocab=vocab, polarity=(0,) * len(vocab), fingerprint=fp, num_labels=k, source=source, **splits)


__all__ = ["Columns", "READERS", "canary_vocab", "load_task_files", "validate_split"]
