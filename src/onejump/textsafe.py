"""Text from users and tokenizers shown as data: literal in matplotlib figures, inert in HTML.

A prompt, a predicted token, a model or lens name may contain anything: ``$x^2$`` (matplotlib's
mathtext would parse it, and ``$$`` makes it raise), ``<script>`` or ``&amp;`` (HTML), control
characters (invalid in SVG's XML), direction overrides (they reorder the text around them), or a
token a megabyte long. Every place that puts such text into a figure or a page passes it through
:func:`figure_text` or :func:`html_text`; neither ever interprets it.
"""

from __future__ import annotations

import html
import re

# C0/C1 controls, zero-width and direction-formatting characters, line/paragraph separators and the
# BOM: shown as escapes so that they neither vanish, break XML nor reorder the text around them.
_HIDDEN_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}

ELLIPSIS = "\u2026"


def visible(text: object, max_chars: int | None = None) -> str:
    """``text`` as a string with every invisible or control character written as an escape
    (``\\n``, ``\\t``, ``\\x07``, ``\\u202e``), cut to ``max_chars`` (an ellipsis marks the cut)."""
    text = str(text)
    if max_chars is not None and len(text) > 4 * max_chars:
        text = text[: 4 * max_chars]  # escapes at most quadruple a character; no need to scan the rest
    shown = _HIDDEN_RE.sub(_escape, text)
    if max_chars is not None and len(shown) > max_chars:
        shown = shown[: max(max_chars - 1, 0)] + ELLIPSIS
    return shown


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def figure_text(text: object, max_chars: int | None = 200) -> str:
    """``text`` for a matplotlib ``Text`` (title, label, tick, legend entry, cell): shown literally.

    Every ``$`` is escaped as ``\\$``: then no even number of unescaped dollars remains, so
    matplotlib never enters mathtext, and it turns each ``\\$`` back into ``$`` when drawing.
    Backslashes, braces and ``%`` are literal outside mathtext and need nothing.
    """
    return visible(text, max_chars).replace("$", "\\$")


def html_text(text: object, max_chars: int | None = None) -> str:
    """``text`` for an HTML element or a quoted attribute: escaped (``& < > " '``) after
    :func:`visible`, so markup, entities and control characters are shown, never interpreted."""
    return html.escape(visible(text, max_chars), quote=True)


__all__ = ["ELLIPSIS", "figure_text", "html_text", "visible"]
