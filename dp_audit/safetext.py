"""Untrusted text (run ids, attack names, reasons, paths: from files a user controls) made safe for a
terminal line, for XML, and for Markdown that CI appends to a job summary (issue 13 items 1, 10;
docs/reliability.md)."""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\`*_\[\]!|<>~&])")  # what can open a span, a link, HTML or a cell
_LINE_START = re.compile(r"^(#|[+\-=])")  # a heading, bullet or rule at line start
_ORDERED = re.compile(r"^(\d+)([.)])")  # an ordered list item at line start


def md_text(value: object) -> str:
    """Inline Markdown text: characters that open a construct are backslash-escaped, newlines
    folded, and a leading heading/list marker neutralised."""
    text = _SPECIAL.sub(r"\\\1", " ".join(str(value).split()))
    return _ORDERED.sub(r"\1\\\2", _LINE_START.sub(r"\\\1", text))


def md_code(value: object, *, in_table: bool = False) -> str:
    """A code span that ``value`` cannot break out of: the fence is one backtick longer than the
    longest run of backticks inside (CommonMark §6.1), padded with spaces; in a table cell pipes
    are escaped too (GFM unescapes them inside code)."""
    text = " ".join(str(value).split())
    if in_table:
        text = text.replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"



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
