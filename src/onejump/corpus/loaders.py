"""Loading sentences: the offline Wikipedia corpus (prepared by :mod:`.offline`), a local ``.txt`` or
``.jsonl`` file, or a Hugging Face dataset (``hf:NAME``, streamed); and the seeded, disjoint
train/test split. Every problem a user can act on raises :class:`onejump.errors.CorpusError`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorpusError
from ..interrupts import on_interrupt
from .cleaning import _sentences_from_document, _sentences_from_paragraph
from .offline import OFFLINE_NAME, prepare_offline_corpus


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

    @property
    def texts(self) -> list[str]:
        """Train then test sentences, in the order :func:`onejump.extract` takes them."""
        return [s.text for s in self.train] + [s.text for s in self.test]

    @property
    def labels(self) -> list[int]:
        """The split of each of :attr:`texts` (0 train, 1 test)."""
        return [0] * len(self.train) + [1] * len(self.test)



_TXT_SUFFIXES = (".txt", ".text")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _read_lines(path: Path, bar: Any = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 text file, with CorpusError for missing, empty,
    binary and non-UTF-8 files; ``bar`` (a tqdm bar over the file's bytes) advances as lines are read."""
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
        if bar is not None:
            bar.reset(total=size)
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
            if bar is not None:
                bar.update(len(raw))


def _load_txt(path: Path, max_documents: int | None, bar: Any = None) -> list[Sentence]:
    """Sentences of a .txt file: one document (or sentence) per non-empty line."""
    out: list[Sentence] = []
    documents = 0
    for _, line in _read_lines(path, bar):
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
    path: Path, text_field: str, max_documents: int | None, *, presplit: bool = False, bar: Any = None
) -> list[Sentence]:
    """Sentences of a .jsonl file: field text_field of each line is a document; an optional
    string "title" is kept (and "source", for presplit corpus files)."""
    out: list[Sentence] = []
    documents = 0
    titles: set[str] = set()
    for number, line in _read_lines(path, bar):
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
    name: str, hf_config: str | None, hf_split: str, text_field: str, max_documents: int | None, bar: Any = None
) -> list[Sentence]:
    """Sentences of a Hugging Face dataset, streamed with datasets.load_dataset."""
    if not name:
        raise CorpusError("empty Hugging Face dataset name: use 'hf:NAME', e.g. 'hf:wikimedia/wikipedia'")
    local = Path(name).expanduser()
    target = str(local) if local.exists() else name
    where = f"Hugging Face dataset {name!r} (config {hf_config!r}, split {hf_split!r})"
    if not local.exists():
        _probe_hub(name, where)
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError("reading 'hf:' corpora needs the 'datasets' package: pip install datasets") from exc
    if max_documents is None:
        warnings.warn(
            f"reading hf:{name} without max_documents streams the whole split", stacklevel=3
        )
    out: list[Sentence] = []
    documents = 0
    try:
        stream = datasets.load_dataset(target, hf_config, split=hf_split, streaming=True)
        for row in stream:
            if max_documents is not None and documents >= max_documents:
                break
            documents += 1
            if bar is not None:
                bar.update(1)
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


def _probe_hub(name: str, where: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with one line, when the hub cannot be reached or has no such dataset (datasets
    itself retries for half a minute first). Skipped in offline mode, where datasets reads its cache."""
    import os

    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - a dependency of datasets
        return
    try:
        HfApi().dataset_info(name, timeout=timeout)
    except GatedRepoError:
        raise CorpusError(f"could not read {where}: it is gated; accept its terms on the hub and log in "
                          "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CorpusError(f"could not read {where}: no such dataset on the Hugging Face hub (or it is private: "
                          "log in with `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - httpx/requests connection and timeout errors, HTTP errors
        if "connect" in type(exc).__name__.lower() or "timeout" in type(exc).__name__.lower() \
                or isinstance(exc, OSError):
            raise CorpusError(f"could not read {where}: the Hugging Face hub cannot be reached (no network?); "
                              "use a local .txt/.jsonl corpus or the default wikipedia-offline") from None
        # anything else (an HTTP error, an unexpected answer): let datasets try and report


def load_sentences(
    source: str | os.PathLike[str] = OFFLINE_NAME,
    *,
    cache_dir: Path | str | None = None,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    max_documents: int | None = None,
    progress: bool = False,
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
        progress: show a progress bar on stderr (bytes of a file, rows of a dataset).

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
    from tqdm.auto import tqdm

    with on_interrupt("the corpus was still being read, nothing was written yet; rerun the same command",
                      alone=True), \
            tqdm(desc="reading corpus", unit="B", unit_scale=True, disable=not progress, leave=False) as bar:
        sentences, label = _load(source, cache_dir, text_field, hf_config, hf_split, max_documents, bar)
    if not sentences:
        raise CorpusError(
            f"no usable sentences in {label} (sentences must be complete prose: capitalised, ending in . ! "
            "or ?, without markup)"
        )
    return sentences


def _load(source: str, cache_dir: Path | str | None, text_field: str, hf_config: str | None, hf_split: str,
          max_documents: int | None, bar: Any) -> tuple[list[Sentence], str]:
    """(sentences, a label for messages) of one corpus source."""
    if source == OFFLINE_NAME:
        path = prepare_offline_corpus(cache_dir, progress=True)
        return _load_jsonl(path, "text", max_documents, presplit=True, bar=bar), OFFLINE_NAME
    if source.startswith("hf:"):
        bar.unit, bar.unit_scale = "row", False
        return _load_hf(source[3:].strip(), hf_config, hf_split, text_field, max_documents, bar), source
    path = Path(source).expanduser()
    if path.is_dir():
        raise CorpusError(f"corpus path is a directory, not a .txt or .jsonl file: {path}")
    if not path.exists():
        raise CorpusError(
            f"unknown corpus source {source!r}: not 'wikipedia-offline', not 'hf:NAME' and no such file"
        )
    suffix = path.suffix.lower()
    if suffix in _TXT_SUFFIXES:
        return _load_txt(path, max_documents, bar), str(path)
    if suffix in _JSONL_SUFFIXES:
        return _load_jsonl(path, text_field, max_documents, bar=bar), str(path)
    raise CorpusError(f"unsupported corpus file type {suffix or '(none)'!r}: use .txt or .jsonl ({path})")


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
