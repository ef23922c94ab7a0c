"""Escaping untrusted text (run ids, model names, attack names, reasons) for Markdown that CI
appends to a job summary: nothing a user controls may open a link, an image, raw HTML, a table
cell or a code span (issue 13 item 10)."""

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
