"""Untrusted text (run ids, attack names, reasons, paths: from files a user controls) made safe for a
terminal line and for XML: whitespace folded, other control characters escaped (review of issue 13;
docs/reliability.md)."""

from __future__ import annotations


def one_line(value: object, *, limit: int | None = None) -> str:
    """``value`` on one printable line: whitespace runs folded to a space, any other non-printable
    character (ESC, \\x1e, which str.splitlines and terminals treat as line breaks or commands)
    written as its Python escape; cut to ``limit`` characters."""
    text = " ".join(str(value).split())
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _xml_char_ok(ch: str) -> bool:
    c = ord(ch)  # XML 1.0 Char production
    return c in (0x9, 0xA, 0xD) or 0x20 <= c <= 0xD7FF or 0xE000 <= c <= 0xFFFD or 0x10000 <= c <= 0x10FFFF


def xml_text(value: object) -> str:
    """``value`` with the characters XML 1.0 cannot hold at all (even escaped) written as Python
    escapes; the XML writer escapes the rest (<, &, quotes)."""
    return "".join(ch if _xml_char_ok(ch) else ascii(ch)[1:-1] for ch in str(value))
