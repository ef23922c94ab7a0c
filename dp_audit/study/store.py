"""The study directory: what it may be, and which of its files the study may replace.

``DIR/study-dir.json`` marks a study directory (its study name and settings). ``--out DIR`` must be
absent, empty, or a study directory of the same study and settings (a rerun resumes it); anything
else is refused with a usage error before any work. A rerun replaces only what the study wrote:
its own ``result.json`` files, and the run and step-audit directories recorded in
``DIR/written.json`` (:class:`Owned`): the study gives each directory a fresh run id and records it
(with the study's id and the arm's definition hash) *before* writing it, and its listing
fingerprint once complete. A directory at one of the study's paths is removed only when its
manifest's run id is the recorded one and its listing is unchanged (or not yet sealed: an arm killed
midway); anything else there — another study's or a user's run, a step audit the study did not
write, a directory with files added — is refused (exit 2, one line) and never deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from dp_audit.errors import UsageError
from dp_audit.io import atomic_write_json, dumps_json

MARKER = "study-dir.json"
WRITTEN = "written.json"
KIND = "dp-audit-study"


def _plain(obj: Any) -> Any:
    return json.loads(dumps_json(obj))


def open_study_dir(out: Path, *, study: str, settings: Mapping[str, Any]) -> Path:
    """Check ``out`` may hold this study (creating it and its marker if new); return it."""
    out = Path(out)
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the real directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    marker = {"kind": KIND, "study": study, "settings": _plain(dict(settings)), "study_id": secrets.token_hex(8)}
    if out.is_dir() and any(out.iterdir()):
        try:
            found = json.loads((out / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UsageError(f"--out {out} exists, is not empty and is not a dp-audit study directory "
                             f"(no readable {MARKER}); choose a new or empty directory") from None
        if not isinstance(found, dict) or found.get("kind") != KIND or found.get("study") != study:
            raise UsageError(f"--out {out} holds another study ({MARKER}); choose another directory")
        if found.get("settings") != marker["settings"]:
            raise UsageError(f"--out {out} holds this study with other settings ({found.get('settings')}); "
                             f"rerun with those settings to resume it, or choose another directory")
        if not isinstance(found.get("study_id"), str) or not found["study_id"]:
            # a study directory from before ids: give it one (its unrecorded directories stay refused)
            atomic_write_json(out / MARKER, {**found, "study_id": marker["study_id"]})
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, marker)
    return out


def study_id_of(out: Path) -> str:
    """The id of the study in ``out`` (from its marker)."""
    return json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))["study_id"]


class Owned:
    """The study's record of the directories it wrote (``DIR/written.json``)::

        {"study_id": ..., "dirs": {"arms/dpsgd/run": {"run_id", "definition_sha256", "listing"}}}

    :meth:`claim` makes a path ready for a new directory (removing only one this study wrote)
    and records the run id the new directory must carry; :meth:`seal` records its listing once
    it is complete."""

    def __init__(self, root: Path, study_id: str):
        self.root, self.study_id = Path(root), study_id
        self.path = self.root / WRITTEN

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise UsageError(f"{self.path} is unreadable: the study cannot tell which directories it wrote; "
                             f"nothing was removed") from None
        if not isinstance(data, dict) or data.get("study_id") != self.study_id or not isinstance(data.get("dirs"), dict):
            raise UsageError(f"{self.path} belongs to another study (or is malformed); nothing was removed")
        return data["dirs"]

    def _save(self, dirs: Mapping[str, Any]) -> None:
        atomic_write_json(self.path, {"study_id": self.study_id, "dirs": dict(dirs)})

    def _rel(self, target: Path) -> str:
        return Path(target).relative_to(self.root).as_posix()

    def vet(self, target: Path) -> None:
        """Raise a UsageError (one line) unless ``target`` is absent, an empty directory, or a
        directory this study wrote (recorded run id) and left unchanged (sealed listing)."""
        from dp_audit.rundir import listing_fingerprint, run_id_of

        target = Path(target)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UsageError(f"{target} is not a directory this study wrote; nothing was removed: move it away "
                             f"or choose another --out")
        if not target.is_dir() or not any(target.iterdir()):
            return
        rec, found = self._load().get(self._rel(target)), run_id_of(target)
        if not isinstance(rec, dict) or found is None or rec.get("run_id") != found:
            raise UsageError(f"{target} holds a directory this study did not write (run id {found or 'none'} "
                             f"is not in {WRITTEN}); nothing was removed: move it away or choose another --out")
        if rec.get("listing") is not None and rec["listing"] != listing_fingerprint(target):
            raise UsageError(f"{target} changed since this study wrote it (files added, removed or edited); "
                             f"nothing was removed: move it away or choose another --out")

    def claim(self, target: Path, *, definition_sha256: str) -> str:
        """Make ``target`` absent (removing a directory this study wrote there, unchanged since;
        refusing anything else, see :meth:`vet`) and record a fresh run id for the directory
        about to be written."""
        from dp_audit.manifest import new_run_id

        target = Path(target)
        self.vet(target)
        if target.is_dir():
            if any(target.iterdir()):
                _remove(target)
            else:
                target.rmdir()
        dirs = self._load()
        rel = self._rel(target)
        run_id = f"{target.name}-{self.study_id}-{new_run_id('x').split('-', 1)[1]}"
        dirs[rel] = {"run_id": run_id, "definition_sha256": definition_sha256, "listing": None}
        self._save(dirs)
        return run_id

    def seal(self, target: Path) -> None:
        """Record the listing of a complete directory the study wrote (its run id as recorded)."""
        from dp_audit.rundir import listing_fingerprint, run_id_of

        dirs = self._load()
        rec = dirs.get(self._rel(target))
        if isinstance(rec, dict) and Path(target).is_dir() and run_id_of(Path(target)) == rec.get("run_id"):
            rec["listing"] = listing_fingerprint(target)
            self._save(dirs)


def _remove(target: Path) -> None:
    """Move ``target`` out of the way (one rename), then delete it."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}-replaced-", dir=target.parent))
    os.rmdir(old)
    target.rename(old)
    shutil.rmtree(old)
