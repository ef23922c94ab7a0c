"""The study directory: what it may be, and which of its files the study may replace.

``DIR/study-dir.json`` marks a study directory (its study name and settings). ``--out DIR`` must be
absent, empty, or a study directory of the same study and settings (a rerun resumes it); anything
else is refused with a usage error before any work. A rerun replaces only what the study wrote:
its own ``result.json`` files, run directories (dp-audit runs, replaced through
:func:`dp_audit.rundir.claim_output`) and step-audit directories (their three files only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from dp_audit.errors import UsageError
from dp_audit.io import atomic_write_json, dumps_json

MARKER = "study-dir.json"
KIND = "dp-audit-study"
STEP_FILES = ("manifest.json", "trials.npz", "step_audit.json")


def _plain(obj: Any) -> Any:
    return json.loads(dumps_json(obj))


def open_study_dir(out: Path, *, study: str, settings: Mapping[str, Any]) -> Path:
    """Check ``out`` may hold this study (creating it and its marker if new); return it."""
    out = Path(out)
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the real directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    marker = {"kind": KIND, "study": study, "settings": _plain(dict(settings))}
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
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, marker)
    return out


def clear_step_dir(d: Path) -> None:
    """Make ``d`` ready for a new step audit: remove an earlier step audit's three files (and the
    folder if then empty). A folder holding anything else is refused, never emptied."""
    if not d.exists():
        return
    if d.is_symlink() or not d.is_dir():
        raise UsageError(f"{d} is not a directory the study wrote; remove it or choose another --out")
    try:
        kind = json.loads((d / "manifest.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    others = [p.name for p in d.iterdir() if p.name not in STEP_FILES]
    if others or (any(d.iterdir()) and kind != "step-audit"):
        raise UsageError(f"{d} holds files the study did not write ({', '.join(others) or 'no step-audit manifest'}); "
                         f"nothing was removed: move them away or choose another --out")
    for f in STEP_FILES:
        (d / f).unlink(missing_ok=True)
    d.rmdir()
