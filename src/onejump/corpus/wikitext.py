"""Reading the two offline sources: WikiExtractor text (exllamav2's wiki.utf8) and MediaWiki XML (gensim's dump)."""

from __future__ import annotations

import bz2
import html
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from ..errors import CorpusError
from .cleaning import (
    _INNER_BOUNDARY_RE,
    _LIST_LINE,
    _POISON,
    _WORD_PUNCT,
    _sentences_from_paragraph,
    clean_text,
    is_clean_sentence,
    split_into_sentences,
)

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
