"""Manifest signing (issue 13 item 13): the digest is unkeyed, so a consistent edit of the claim
(audit.json and manifest rewritten, digest recomputed) passes it; an HMAC-SHA256 signature with a
key from $DP_AUDIT_SIGNING_KEY does not."""

from __future__ import annotations

import json

import pytest

from dp_audit.errors import IntegrityError, UsageError
from dp_audit.manifest import MANIFEST, SIGNING_KEY_ENV, load_manifest, manifest_digest, verify_signature, write_manifest


def _run(tmp_path, monkeypatch, key: str | None):
    if key is None:
        monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(SIGNING_KEY_ENV, key)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.txt").write_text("artifact")
    write_manifest(tmp_path, kind="train", config={}, seeds={}, claim={"epsilon": 1.0, "delta": 1e-5},
                   artifacts=["a.txt"])
    return tmp_path


def _tamper(run):
    m = json.loads((run / MANIFEST).read_text())
    m["claim"]["epsilon"] = 100.0  # a consistent edit: the digest is redone
    m["digest"] = manifest_digest(m)
    (run / MANIFEST).write_text(json.dumps(m))


def test_signed_manifest_verifies(tmp_path, monkeypatch):
    """Bug caught: a signature computed over something other than the saved digest never verifies."""
    run = _run(tmp_path, monkeypatch, "k1")
    assert verify_signature(run, load_manifest(run), required=True) is True


def test_consistent_tampering_passes_the_digest_but_not_the_signature(tmp_path, monkeypatch):
    """Bug caught: the unkeyed digest alone accepted a rewritten claim."""
    run = _run(tmp_path, monkeypatch, "k1")
    _tamper(run)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    load_manifest(run)  # the digest alone cannot tell
    monkeypatch.setenv(SIGNING_KEY_ENV, "k1")
    with pytest.raises(IntegrityError, match="signature does not match"):
        load_manifest(run)


def test_other_key_and_missing_signature(tmp_path, monkeypatch):
    """Bugs caught: a signature by another key accepted; an unsigned run passing --require-signature."""
    run = _run(tmp_path / "a", monkeypatch, "k1")
    monkeypatch.setenv(SIGNING_KEY_ENV, "k2")
    with pytest.raises(IntegrityError, match="another key"):
        load_manifest(run)
    unsigned = _run(tmp_path / "b", monkeypatch, None)
    monkeypatch.setenv(SIGNING_KEY_ENV, "k2")
    with pytest.raises(IntegrityError, match="not signed"):
        verify_signature(unsigned, load_manifest(unsigned), required=True)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    with pytest.raises(UsageError, match="is not set"):
        verify_signature(unsigned, load_manifest(unsigned), required=True)


def test_stripping_the_signature_is_caught_when_required(tmp_path, monkeypatch):
    """Bug caught: deleting the signature field (then redoing the digest) passed a required check."""
    run = _run(tmp_path, monkeypatch, "k1")
    m = json.loads((run / MANIFEST).read_text())
    del m["signature"]
    m["claim"]["epsilon"] = 100.0
    m["digest"] = manifest_digest(m)
    (run / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="not signed"):
        verify_signature(run, load_manifest(run), required=True)
