"""Run manifests: what was run, with which seeds and versions, and the sha256 of every artifact
(DESIGN.md §3). Loading verifies every hash: a mismatch or a missing artifact is an
:class:`IntegrityError` (exit 3)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import importlib.metadata
import os
import platform
import secrets
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from dp_audit import SCHEMA_VERSION, __version__
from dp_audit.errors import IntegrityError, UsageError
from dp_audit.io import atomic_write_json, canonical_fingerprint, read_json, sha256_file

MANIFEST = "manifest.json"
PENDING = ".audit-pending.json"  # written by `dp-audit run` before it rewrites any audit output
REQUIRED_KEYS = (
    "schema_version", "tool_version", "run_id", "created", "kind", "config", "seeds",
    "claim", "artifacts", "environment", "digest",
)
OPTIONAL_KEYS = ("data_fingerprint", "notes", "selection", "source", "signature")
SIGNING_KEY_ENV = "DP_AUDIT_SIGNING_KEY"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(name: str = "run") -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "platform": platform.platform(), "dp_audit": __version__}
    for dist in ("torch", "opacus", "transformers", "peft", "numpy", "scipy", "dp-accounting"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return env


def hash_artifacts(run_dir: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each relative path; a directory contributes every file below it."""
    out: dict[str, str] = {}
    for rel in paths:
        p = inside(run_dir, rel)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            inside(run_dir, f.relative_to(run_dir).as_posix())  # a symlink below p may point out
            if f.name.startswith(".") and f.name.endswith(".tmp"):
                continue
            out[f.relative_to(run_dir).as_posix()] = sha256_file(f)
    return dict(sorted(out.items()))


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its ``digest`` and ``signature`` fields: an
    edit to the claim, the config or an artifact hash that does not redo the digest is caught on
    load. The digest is unkeyed: whoever edits consistently can redo it; the signature cannot be."""
    return canonical_fingerprint({k: v for k, v in manifest.items() if k not in ("digest", "signature")})


def _signing_key() -> bytes | None:
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode("utf-8") if key else None


def _signature(key: bytes, digest: str) -> dict[str, str]:
    return {"alg": "hmac-sha256", "key_id": hashlib.sha256(b"dp-audit key id:" + key).hexdigest()[:16],
            "value": hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()}


def _save(run_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["digest"] = manifest_digest(manifest)
    key = _signing_key()
    if key is not None:
        manifest["signature"] = _signature(key, manifest["digest"])
    else:
        manifest.pop("signature", None)  # a signature over an older digest would only mislead
    atomic_write_json(run_dir / MANIFEST, manifest)


def verify_signature(run_dir: str | Path, manifest: Mapping[str, Any], *, required: bool) -> bool:
    """Check the manifest's HMAC-SHA256 signature with the key in ``$DP_AUDIT_SIGNING_KEY``.

    Returns True when a signature was verified. A signature that does not match the key, or (with
    ``required``) a missing key or a missing signature, is an :class:`IntegrityError` (exit 3)."""
    key = _signing_key()
    sig = manifest.get("signature")
    where = Path(run_dir) / MANIFEST
    if key is None:
        if required:
            raise UsageError(f"a signature is required but ${SIGNING_KEY_ENV} is not set")
        return False
    if not isinstance(sig, dict):
        if required:
            raise IntegrityError(f"{where} is not signed (a signature is required)")
        return False
    expected = _signature(key, str(manifest.get("digest")))
    if sig.get("key_id") != expected["key_id"]:
        raise IntegrityError(f"{where} was signed with another key (key id {sig.get('key_id')!r})")
    if not hmac.compare_digest(str(sig.get("value")), expected["value"]):
        raise IntegrityError(f"{where}: signature does not match its content (edited after signing)")
    return True


def write_manifest(
    run_dir: str | Path,
    *,
    kind: str,
    config: Mapping[str, Any],
    seeds: Mapping[str, int],
    claim: Mapping[str, Any],
    artifacts: Iterable[str],
    run_id: str | None = None,
    data_fingerprint: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "run_id": run_id or new_run_id(run_dir.name),
        "created": utc_now(),
        "kind": kind,
        "config": dict(config),
        "seeds": dict(seeds),
        "claim": dict(claim),
        "artifacts": hash_artifacts(run_dir, artifacts),
        "environment": environment(),
    }
    if data_fingerprint is not None:
        manifest["data_fingerprint"] = data_fingerprint
    manifest.update(extra or {})
    _save(run_dir, manifest)
    return manifest


def load_manifest(run_dir: str | Path, *, verify: bool = True, allow_pending: bool = False) -> dict[str, Any]:
    """Read and validate ``manifest.json``; with ``verify`` check every artifact's sha256.

    A run whose last ``dp-audit run`` did not finish (killed, or failed half-way: the marker
    :data:`PENDING` is still there) is refused unless ``allow_pending``: its audit outputs may be
    half-written or stale, so nothing may gate or render them; rerunning the audit redoes them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory not found: {run_dir}")
    if not allow_pending and (run_dir / PENDING).exists():
        raise UsageError(f"the last `dp-audit run` on {run_dir} did not finish (interrupted or failed), so its "
                         f"audit outputs are not valid: rerun `dp-audit run --run {run_dir}`")
    if not (run_dir / MANIFEST).exists():
        raise UsageError(f"{run_dir} is not a dp-audit run directory: it has no {MANIFEST}")
    manifest = read_json(run_dir / MANIFEST, what="manifest", integrity=True)
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{run_dir / MANIFEST}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise IntegrityError(f"{run_dir / MANIFEST}: missing key(s): {', '.join(missing)}")
    unknown = sorted(set(manifest) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        warnings.warn(f"{run_dir / MANIFEST}: unknown key(s) ignored: {', '.join(unknown)}", stacklevel=2)
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise IntegrityError(
            f"{run_dir / MANIFEST}: schema_version {manifest['schema_version']} is not {SCHEMA_VERSION}"
        )
    kinds = {"config": dict, "seeds": dict, "claim": dict, "environment": dict, "run_id": str, "kind": str,
             "created": str, "digest": str}
    wrong = [k for k, t in kinds.items() if not isinstance(manifest[k], t)]
    if wrong:
        raise IntegrityError(f"{run_dir / MANIFEST}: wrong type for {', '.join(wrong)} (docs/formats.md)")
    if not isinstance(manifest["artifacts"], dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifest["artifacts"].items()):
        raise IntegrityError(f"{run_dir / MANIFEST}: 'artifacts' must map relative paths to sha256 strings")
    if manifest["digest"] != manifest_digest(manifest):
        raise IntegrityError(f"{run_dir / MANIFEST} was edited: its digest does not match its content")
    if _signing_key() is not None and "signature" in manifest:
        verify_signature(run_dir, manifest, required=False)  # a present signature is always checked
    if verify:
        verify_artifacts(run_dir, manifest["artifacts"])
    return manifest


def inside(run_dir: Path, rel: str) -> Path:
    """``run_dir / rel``, refusing a path that leaves the run directory (``..``, an absolute path,
    or a symlink pointing outside): a manifest can only vouch for files of its own run."""
    root = run_dir.resolve()
    path = run_dir / rel
    resolved = path.resolve()
    if Path(rel).is_absolute() or (resolved != root and root not in resolved.parents):
        raise IntegrityError(f"artifact path leaves the run directory {run_dir}: {rel}")
    return path


def verify_artifacts(run_dir: Path, artifacts: Mapping[str, str]) -> None:
    for rel, expected in artifacts.items():
        path = inside(run_dir, rel)
        if not path.is_file():
            raise IntegrityError(f"artifact listed in the manifest is missing: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"sha256 mismatch for {path}: manifest {expected[:12]}…, file {actual[:12]}…")


def add_artifacts(run_dir: str | Path, paths: Iterable[str]) -> dict[str, Any]:
    """Record (or refresh) the hashes of new artifacts, e.g. audit outputs, in the manifest."""
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir, verify=False, allow_pending=True)
    manifest["artifacts"].update(hash_artifacts(run_dir, paths))
    manifest["artifacts"] = dict(sorted(manifest["artifacts"].items()))
    _save(run_dir, manifest)
    return manifest


def drop_artifacts(run_dir: str | Path, predicate) -> dict[str, Any]:
    """Remove the entries whose relative path satisfies ``predicate`` from the manifest (their files
    are about to be rewritten: the manifest stops vouching for them)."""
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir, verify=False, allow_pending=True)
    manifest["artifacts"] = {k: v for k, v in manifest["artifacts"].items() if not predicate(k)}
    _save(run_dir, manifest)
    return manifest
