"""Replacing an output directory safely (issue 13 items 4 and 5; docs/reliability.md).

dp-audit only ever removes a directory that is a dp-audit run (it has a readable ``manifest.json``
with a ``run_id``), never one holding the command's inputs, and never one that changed between the
start of a command and its end (files put there meanwhile, or another run written into it).

    state = claim_output(out, overwrite=args.overwrite, inputs=[model_dir, canaries])
    ... build the new run in a temporary sibling ``tmp`` ...
    install_output(tmp, out, state)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from dp_audit.errors import UsageError

MANIFEST = "manifest.json"


class OutputChanged(UsageError):
    """``out`` changed while the command ran; the finished run was kept in its temporary directory."""


@dataclass(frozen=True)
class OutputState:
    """What ``out`` was when the command started: absent, empty, or the run with ``run_id``;
    ``listing`` fingerprints every entry below it (path, type, size, mtime), so a file added to or
    edited in the old run meanwhile is noticed even though the run id stays the same."""

    path: Path
    kind: str  # "absent" | "empty" | "run"
    run_id: str | None = None
    listing: tuple[tuple[str, str, int, int], ...] = ()


def run_id_of(path: Path) -> str | None:
    """The run id of a dp-audit run directory, else None (no or unreadable manifest)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run_id = manifest.get("run_id") if isinstance(manifest, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def _listing(path: Path) -> tuple[tuple[str, str, int, int], ...]:
    out = []
    for dirpath, dirnames, filenames in os.walk(path):  # does not follow symlinked directories
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            kind = "link" if full.is_symlink() else ("dir" if full.is_dir() else "file")
            out.append((full.relative_to(path).as_posix(), kind, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def listing_fingerprint(path: str | Path) -> str:
    """sha256 over every entry below ``path`` (relative path, type, size, mtime): changes when a
    file is added, removed or edited there."""
    import hashlib

    return hashlib.sha256(json.dumps(_listing(Path(path))).encode("utf-8")).hexdigest()


def _state(path: Path) -> OutputState:
    if path.is_symlink():
        raise UsageError(f"output path {path} is a symbolic link; give the real directory")
    if not path.exists():
        return OutputState(path, "absent")
    if not path.is_dir():
        raise UsageError(f"output path {path} exists and is not a directory")
    if not any(path.iterdir()):
        return OutputState(path, "empty")
    return OutputState(path, "run", run_id_of(path), _listing(path))


def _contains(parent: Path, child: Path) -> bool:
    parent, child = parent.resolve(), child.resolve()
    return child == parent or parent in child.parents


def claim_output(out: str | Path, *, overwrite: bool, inputs: Iterable[str | Path] = ()) -> OutputState:
    """Check, before any work, that ``out`` may be written: absent, empty, or (with ``overwrite``)
    a dp-audit run that holds none of ``inputs``. Returns the state to pass to install_output."""
    out = Path(out)
    state = _state(out)
    if state.kind != "run":
        return state
    if not overwrite:
        raise UsageError(f"output directory {out} exists and is not empty (use --overwrite)")
    if state.run_id is None:
        raise UsageError(f"refusing to overwrite {out}: it is not a dp-audit run directory (no readable "
                         f"{MANIFEST}); choose another --out")
    for item in inputs:
        if item is not None and (_contains(out, Path(item)) or _contains(Path(item), out)):
            raise UsageError(f"refusing to overwrite {out}: it holds an input of this command ({item})")
    return state


@contextlib.contextmanager
def staged_output(out: Path, state: OutputState) -> Iterator[Path]:
    """Build the new output in a temporary sibling of ``out`` (yielded), then :func:`install_output`
    it. On an error the temporary directory (created here) is removed, except when ``out`` changed
    meanwhile: then the finished output stays there, as the error message says."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        install_output(tmp, out, state)
    except OutputChanged:
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install_output(tmp: Path, out: Path, state: OutputState) -> Path:
    """Rename the finished ``tmp`` into ``out``, replacing only what ``claim_output`` vouched for.
    If ``out`` changed meanwhile, nothing is removed: the new run stays at ``tmp`` and the error
    says so."""
    try:
        now = _state(out)
    except UsageError:  # became a file or a symlink meanwhile
        now = OutputState(out, "other")
    if now != state:
        raise OutputChanged(f"{out} changed while this command ran (was {state.kind}"
                         f"{' ' + state.run_id if state.run_id else ''}, now {now.kind}"
                         f"{' ' + now.run_id if now.run_id else ''}); nothing was removed, the new run "
                         f"is at {tmp}")
    if now.kind == "empty":
        os.rmdir(out)  # only succeeds if still empty
    elif now.kind == "run":
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-replaced-", dir=out.parent))
        os.rmdir(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)  # a dp-audit run (checked above) that this command replaces
        return out
    tmp.rename(out)
    return out
