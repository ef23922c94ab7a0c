"""``--set section.key=value`` overrides for TOML configs (values parsed as TOML literals)."""

from __future__ import annotations

import tomllib
from typing import Any, Sequence

from dp_audit.errors import UsageError


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` set (tables created as needed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
            node[part] = nxt = dict(nxt)
            node = nxt
        node[parts[-1]] = parse_value(value.strip())
    return out
