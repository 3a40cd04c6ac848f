"""Cleaning extracted Wikipedia text and splitting it into clean, complete sentences (pysbd)."""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

from ..errors import CorpusError

# Marks a piece of text that could not be rendered (math, chemistry formulae, superscripts,
# unknown units): any sentence containing it is dropped. A control character, so it can never
# come from the data itself (clean_text removes those).
_POISON = "\x00"


# Marks a wikitext list item, definition or indented line: the whole line is dropped.
_LIST_LINE = "\x01"
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")


# "( )", "(, )", "(; ; )", "()" and the like, left where templates (pronunciations, dates,
# conversions) were removed; the space before them goes too so no " ," is created.
_EMPTY_PARENS_RE = re.compile(r"\s*[(\[]\s*(?:[,;:\u2013\u2014-]\s*)*[)\]]")
_LEADING_GAP_RE = re.compile(r"\(\s*(?:[,;:]\s*)+")  # "( , adjective" -> "(adjective"
_TRAILING_GAP_RE = re.compile(r"\s*(?:[,;:]\s*)+\)")  # "(word; )" -> "(word)"
_SPACE_BEFORE_RE = re.compile(r"\s+([;:!?])(?=\s|$)")  # "common name : the" -> "common name: the"
_WS_RE = re.compile(r"\s+")
_MAX_PASSES = 16
_CONTROL_RE = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# Invisible characters that carry no text (zero-width spaces/joiners, direction marks, BOM,
# soft hyphen).
_INVISIBLE_RE = re.compile("[\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\ufeff]")


def clean_text(text: str) -> str:
    """Lightly clean one paragraph of plain text (no newlines in the result).

    Decodes HTML entities (also double-encoded ones such as ``&amp;amp;``), removes HTML tags,
    control and invisible characters, removes the gaps that removed templates leave behind
    (``()``, ``( )``, ``(, )``, ``(; ; )``, a separator just inside a parenthesis), removes the
    space before ``; : ! ?`` and collapses whitespace.

    A space before ``,`` or ``.`` is deliberately kept: in Wikipedia-derived text it almost always
    marks a removed value (``"an area of , all land"``), and :func:`is_clean_sentence` drops such
    sentences rather than pretending to repair them.
    """
    for _ in range(3):  # entities are sometimes escaped twice ("&amp;nbsp;")
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _HTML_TAG_RE.sub(" ", text)
    text = _INVISIBLE_RE.sub("", text)
    # Control characters other than whitespace are not text (the poison marker survives on purpose).
    text = _CONTROL_RE.sub(" ", text)
    text = _WS_RE.sub(" ", text)
    # Each pass removes one level of nested empty brackets; real text needs two or three, and the cap
    # keeps a line of a million nested "(" linear.
    previous = None
    for _ in range(_MAX_PASSES):
        if previous == text:
            break
        previous = text
        text = _EMPTY_PARENS_RE.sub("", text)
        text = _LEADING_GAP_RE.sub("(", text)
        text = _TRAILING_GAP_RE.sub(")", text)
    text = _SPACE_BEFORE_RE.sub(r"\1", text)
    text = _DOUBLE_STOP_RE.sub(r"\1.", text)  # "King, Jr.." (abbreviation + full stop)
    return _WS_RE.sub(" ", text).strip()


_MARKUP_LEFTOVERS = ("{{", "}}", "[[", "]]", "|", "=", "<", ">", "http", "www.", "''", "\\", "@", "#", "^")
_END_RE = re.compile(r"[.!?][\"'\u201d\u2019)]*$")


# A space before "," or "." (not "..." and not ".417"): a value removed by a template.
_GAP_PUNCT_RE = re.compile(r"(?:^|\s)[,.](?=\s|$)|\s,")


# Removed conversions ("about of space", "grows to long", "an elevation of above sea level").
_GAP_WORDS_RE = re.compile(
    r"\b(?:about|approximately|around|roughly|nearly|almost|measuring|measures|reaching|reaches|"
    r"spanning|spans|covering|covers)\s+"
    r"(?:long|wide|high|tall|deep|thick|in (?:length|diameter|height|width|area|depth)|"
    r"above sea level|below sea level|across|away)(?![\w-])"
    r"|\b(?:about|approximately|around|roughly|nearly|almost)\s+(?:of|per)\b"
    r"|\bof\s+(?:of|from|and|or|to|at|per|above|below)\b"
    r"|\b(?:long|wide|high|tall|deep) and (?:long|wide|high|tall|deep)(?![\w-])"
    r"|\b(?:a|an|the)\s+(?:of|and|or|in|to|at|is|was|were|are)\b",
    re.IGNORECASE,
)


# Other traces of removed text: empty quotes ("", a removed title), a space just inside
# parentheses ("(sometimes up to )"), a doubled full stop, a currency sign without an amount
# ("$ in current dollar terms", a removed inflation template).
_GAP_OTHER_RE = re.compile(
    r'""|\u201c\u201d|\u2018\u2019|\(\s|\s\)|(?<!\.)\.\.(?!\.)|[$\u20ac\u00a3\u00a5](?!\s?[\d\u2013-])'
)


_WORD_PUNCT = ".,;:!?\"'()[]\u201c\u201d\u2018\u2019"
_DOUBLE_STOP_RE = re.compile(r"\b(Jr|Sr|Inc|Ltd|Co|Corp|Bros|St|Ave|Mt)\.\.(?!\.)")


def _first_letter_ok(text: str) -> bool:
    """True when the sentence starts (after opening quotes/brackets) with a capital or a digit."""
    for ch in text:
        if ch in "\"'\u201c\u2018([\u00bf\u00a1":
            continue
        # Letters of scripts without case (CJK, Arabic, ...) are accepted too.
        return ch.isupper() or ch.isdigit() or (ch.isalpha() and not ch.islower())
    return False


def _balanced(text: str) -> bool:
    """True when parentheses, brackets and straight/curly double quotes are balanced."""
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    if depth != 0 or text.count("[") != text.count("]"):
        return False
    if text.count('"') % 2:
        return False
    return text.count("\u201c") == text.count("\u201d")


def is_clean_sentence(text: str) -> bool:
    """Whether a cleaned sentence looks like clean, natural prose worth keeping.

    Rejects: markup leftovers (``{{ }} [[ ]] | = < >``, ``http``, ``''``), sentences not ending in
    ``. ! ?`` (optionally followed by a closing quote or parenthesis) or ending in an abbreviation
    such as ``c.`` (a bad split), sentences not starting with a capital letter or a digit (a removed
    subject, a bad split), unbalanced parentheses or quotes, gaps left by removed templates (a
    space before ``,`` or ``.`` or just inside a parenthesis, ``"about of"``, ``"the is"``, empty
    quotes ``""``, ``..``, a currency sign without an amount), mostly non-alphabetic text
    (tables, scores, coordinates), control characters, sentences shorter than three words and
    sentences without a single lowercase word of three or more letters (lists of names, headings).
    """
    if not text or _POISON in text or _LIST_LINE in text:
        return False
    if any(m in text for m in _MARKUP_LEFTOVERS):
        return False
    if not _END_RE.search(text) or not _first_letter_ok(text):
        return False
    words = text.split()
    if len(words) < 3 or _NON_FINAL_ABBREV_RE.search(text):
        return False
    if _GAP_PUNCT_RE.search(text) or _GAP_WORDS_RE.search(text) or _GAP_OTHER_RE.search(text):
        return False
    if not _balanced(text):
        return False
    if any(unicodedata.category(ch) in ("Cc", "Co", "Cs", "Cn") for ch in text):
        return False
    if "\ufffd" in text:
        return False
    visible = [ch for ch in text if not ch.isspace()]
    letters = sum(ch.isalpha() for ch in visible)
    if letters < 0.6 * len(visible):
        return False
    # Without a single lowercase word of 3+ letters it is a list of names or a heading, not prose.
    return any(
        len(core) >= 3 and core.isalpha() and core.islower()
        for core in (w.strip(_WORD_PUNCT) for w in words)
    )


_SEGMENTER: Any = None


# A possible sentence boundary inside a paragraph: . ! ? (and closing quotes/brackets) then a space.
_INNER_BOUNDARY_RE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s")


# Abbreviations after which pysbd sometimes ends a sentence that goes on: the next piece is
# glued back on (a sentence never really ends with "c." or "e.g.").
_NON_FINAL_ABBREV_RE = re.compile(
    r"(?:^|[\s(])(?:c|ca|approx|e\.g|i\.e|cf|vs|viz|No|Nos|Vol|pp|p|fig|Fig|Mr|Mrs|Ms|Dr|Prof|Gen|Lt|"
    r"Col|Capt|Sgt|Rev|Hon|Mt|Brig|Gov|Sen|Rep|Adm|Maj|Cmdr|est|incl)\.$"
)


def _segmenter() -> Any:
    """The pysbd English segmenter (created once; imported lazily)."""
    global _SEGMENTER
    if _SEGMENTER is None:
        try:
            import pysbd
        except ImportError as exc:  # pragma: no cover - pysbd is a dependency
            raise CorpusError("sentence splitting needs the 'pysbd' package: pip install pysbd") from exc
        _SEGMENTER = pysbd.Segmenter(language="en", clean=False)
    return _SEGMENTER


# pysbd's time grows with the square of the text it is given, so a long paragraph is read through a
# window: pysbd splits the next _WINDOW characters, the pieces up to the last boundary that lies
# before the window's last _MARGIN characters and outside every quotation and bracket are kept, and
# the next window starts there. pysbd decides a boundary from a few characters around it and never
# splits inside a quotation or a parenthesis it sees whole, so a kept piece is the one it finds in
# the whole paragraph (with rare exceptions: pysbd's split after a straight quotation followed by a
# parenthesis can depend on text far away). Text up to _WINDOW characters goes to pysbd whole, as
# before: every paragraph of the offline corpus is shorter (at most 3,497 characters).
_WINDOW = 8000
_MARGIN = 2000
# A window grows (doubling) while it has no such boundary; past _GROW_LIMIT a boundary inside a
# quotation is taken (an unclosed quotation mark would otherwise hold the window open to the end),
# and past _MAX_WINDOW a single "sentence" is cut.
_GROW_LIMIT = 4 * _WINDOW
_MAX_WINDOW = 1 << 16
_OPENERS = {"(": ")", "[": "]", "\u201c": "\u201d"}


def _cuts(pieces: list[str], size: int) -> tuple[int, int]:
    """(pieces before the last boundary outside quotes and brackets, pieces before the last boundary at
    all), counting only boundaries that end before the window's margin."""
    depth = dict.fromkeys(_OPENERS, 0)
    quotes = end = balanced = plain = 0
    for i, piece in enumerate(pieces[:-1]):
        end += len(piece)
        if end > size - _MARGIN:
            break
        quotes += piece.count('"')
        for opener, closer in _OPENERS.items():
            for ch in piece:
                if ch == opener:
                    depth[opener] += 1
                elif ch == closer:
                    depth[opener] = max(0, depth[opener] - 1)
        plain = i + 1
        if quotes % 2 == 0 and not any(depth.values()):
            balanced = i + 1
    return balanced, plain


def _segment(paragraph: str) -> list[str]:
    """pysbd's pieces of ``paragraph`` (their concatenation is the paragraph), in linear time."""
    segmenter = _segmenter()
    if len(paragraph) <= _WINDOW:
        return segmenter.segment(paragraph)
    pieces: list[str] = []
    start, size = 0, _WINDOW
    while len(paragraph) - start > size:
        window = paragraph[start:start + size]
        found = segmenter.segment(window)
        if "".join(found) != window:  # pysbd changed the text: no offsets to continue from
            return segmenter.segment(paragraph)
        balanced, plain = _cuts(found, size)
        keep = balanced or (plain if size >= _GROW_LIMIT else 0)
        if not keep and size < _MAX_WINDOW:
            size *= 2
            continue
        kept = found[:keep] if keep else [window]
        pieces.extend(kept)
        start, size = start + sum(map(len, kept)), _WINDOW
    pieces.extend(segmenter.segment(paragraph[start:]))
    return pieces


def split_into_sentences(paragraph: str) -> list[str]:
    """Split one cleaned paragraph into sentences with pysbd (English, ``clean=False``).

    A paragraph with no ``. ! ?`` followed by a space before its end is returned whole without
    calling pysbd (pysbd costs about a millisecond a call). Pieces are whitespace-normalised; a
    piece ending in an abbreviation that never ends a sentence (``c.``, ``e.g.``, ``No.``, ``Dr.``)
    is joined with the next one. Time is linear in the paragraph's length (pysbd reads a long one
    through a window); a single piece longer than 65,536 characters is cut there.
    """
    paragraph = paragraph.strip()
    if not paragraph:
        return []
    if not _INNER_BOUNDARY_RE.search(paragraph):
        return [paragraph]
    pieces = [p for p in (_WS_RE.sub(" ", piece).strip() for piece in _segment(paragraph)) if p]
    merged: list[list[str]] = []
    for piece in pieces:
        # only the end of the piece so far can hold the abbreviation (search from its last 20 characters)
        if merged and _NON_FINAL_ABBREV_RE.search(merged[-1][-1], max(0, len(merged[-1][-1]) - 20)):
            merged[-1].append(piece)
        else:
            merged.append([piece])
    return [" ".join(parts) for parts in merged]


def _sentences_from_paragraph(paragraph: str) -> list[str]:
    """clean_text -> split_into_sentences -> is_clean_sentence, for one paragraph (one line)."""
    return [s for s in split_into_sentences(clean_text(paragraph)) if is_clean_sentence(s)]


def _sentences_from_document(document: str) -> list[str]:
    """Sentences of a document, split per line (a line is a paragraph)."""
    out: list[str] = []
    for line in document.splitlines():
        if line.strip():
            out.extend(_sentences_from_paragraph(line))
    return out
