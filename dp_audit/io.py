"""Atomic file writes, hashing, and pickle-free npz/JSON I/O."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dp_audit.errors import IntegrityError, UsageError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:  # name the path the caller gave, not the temporary file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_or_none(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings so files stay standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_finite_or_none(_to_plain(obj)), indent=2, sort_keys=False, default=_json_default) + "\n"


def _to_plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return _to_plain(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike, *, what: str = "JSON file", integrity: bool = False) -> Any:
    """Read JSON; a missing file is a usage error (or integrity, for run artifacts)."""
    path = Path(path)
    err = IntegrityError if integrity else UsageError
    if not path.is_file():
        raise err(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise err(f"{what} is not valid JSON: {path}: {exc}") from None


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to an uncompressed npz atomically (numeric/bool arrays only, no objects)."""
    import io as _io

    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; npz files here never hold pickles")
    import zipfile

    # np.savez stamps each member with the current time; a fixed stamp makes the same arrays give
    # the same bytes (and hashes) on every run, backend and worker count (docs/scale-out.md)
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike, *, integrity: bool = False) -> dict[str, np.ndarray]:
    path = Path(path)
    err = IntegrityError if integrity else UsageError
    if not path.is_file():
        raise err(f"scores file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
        raise err(f"cannot read npz file {path}: {exc}") from None


def load_scores(path: str | os.PathLike, *, integrity: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load a scores.npz (``scores`` float, ``member`` bool) and validate it (DESIGN.md §3)."""
    z = load_npz(path, integrity=integrity)
    missing = [k for k in ("scores", "member") if k not in z]
    if missing:
        raise UsageError(f"{path}: missing array(s) {', '.join(missing)} (need 'scores' and 'member')")
    return validate_scores(z["scores"], z["member"], source=str(path))


_REAL_KINDS = "iuf"  # signed, unsigned, floating; never complex, strings, dates or records


def validate_scores(scores: Any, member: Any, *, source: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Scores: a 1-D real array; member: 1-D bool (or 0/1) of the same shape. Nothing is coerced."""
    raw = np.asarray(scores)
    member_arr = np.asarray(member)
    if raw.dtype.kind not in _REAL_KINDS:
        raise UsageError(f"{source}: 'scores' must be real numbers, got dtype {raw.dtype}")
    if member_arr.dtype.kind not in "biu":
        raise UsageError(f"{source}: 'member' must be boolean (or 0/1), got dtype {member_arr.dtype}")
    if raw.shape != member_arr.shape:
        raise UsageError(f"{source}: 'scores' has shape {raw.shape} but 'member' has shape {member_arr.shape}")
    if raw.ndim != 1:
        raise UsageError(f"{source}: 'scores' and 'member' must be 1-D, got shape {raw.shape}")
    scores = raw.astype(float)
    member_arr = member_arr.ravel()
    if scores.size == 0:
        raise UsageError(f"{source}: no scores")
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise UsageError(f"{source}: {bad} score(s) are NaN or infinite")
    if member_arr.dtype != bool:
        if not np.all(np.isin(member_arr, (0, 1))):
            raise UsageError(f"{source}: 'member' must be boolean (or 0/1)")
        member_arr = member_arr.astype(bool)
    return scores, member_arr


def canonical_fingerprint(obj: Mapping[str, Any] | list[Any]) -> str:
    """sha256 of a canonical JSON encoding (for configs and data sets)."""
    data = json.dumps(_finite_or_none(_to_plain(obj)), sort_keys=True, separators=(",", ":"),
                      default=_json_default)  # inf as "inf", as files store it
    return hashlib.sha256(data.encode("utf-8")).hexdigest()
