"""The text side of streaming training: sentences, held-out sentences, and steps of exactly T positions.

The corpus is read with :func:`onejump.corpus.loaders.load_sentences` (the offline sample, a local
``.txt``/``.jsonl`` file, ``hf:`` streamed) and kept to sentences of 8..60 words, deduplicated, as
:func:`~onejump.corpus.loaders.split_sentences` keeps them. A seeded permutation of them (the
same draw as ``split_sentences``) puts ``val_sentences`` whole sentences aside for validation;
the rest is the training stream, read in that order, then again in a fresh seeded order per pass
when the token budget asks for more than one pass.

Positions follow the store's conventions: every position 1..n-1 of a sentence of n tokens as the
tokenizer encodes it with its special tokens, never position 0 (the BOS token, or no context). A
step holds exactly ``tokens_per_step`` positions: sentences are taken whole until the next one
would overflow the step, which takes only its first positions and leaves the others to the next
step (whose forward of that sentence is exact: causal attention, the state at p depends on tokens
0..p only). Which positions a step holds depends on the corpus, the seed and T only, so a resumed
run, or every rank of a data-parallel one, plans the same steps from a three-number cursor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorpusError
from ..extract_plan import Sample, plan_batches

MIN_WORDS, MAX_WORDS = 8, 60


def usable_sentences(texts: Sequence[str], min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Sentences of ``min_words``..``max_words`` whitespace words, whitespace-normalised, first copy kept."""
    seen: set[str] = set()
    out = []
    for text in texts:
        words = text.split()
        if min_words <= len(words) <= max_words and (norm := " ".join(words)) not in seen:
            seen.add(norm)
            out.append(norm)
    return out


@dataclass(frozen=True)
class StreamText:
    """The training stream and the held-out sentences, drawn from a corpus with ``seed``."""

    train: list[str]
    val: list[str]
    seed: int

    @classmethod
    def from_texts(cls, texts: Sequence[str], val_sentences: int, seed: int) -> StreamText:
        pool = usable_sentences(texts)
        if len(pool) < val_sentences + 1:
            raise CorpusError(f"only {len(pool)} usable sentences ({MIN_WORDS}-{MAX_WORDS} words, deduplicated); "
                              f"streaming training holds out {val_sentences} and needs at least one more")
        order = np.random.default_rng(seed).permutation(len(pool))
        return cls([pool[i] for i in order[val_sentences:]], [pool[i] for i in order[:val_sentences]], seed)

    @property
    def digest(self) -> str:
        """A hash of the sentences and their split: what a checkpoint of this stream is keyed on."""
        h = hashlib.sha256()
        for part in (self.train, self.val):
            for text in part:
                h.update(text.encode("utf-8", "surrogatepass") + b"\0")
            h.update(b"\1")
        return h.hexdigest()[:16]


@dataclass
class Cursor:
    """Where the next step starts: pass ``epoch`` over the stream, its ``index``-th sentence, position ``offset``."""

    epoch: int = 0
    index: int = 0
    offset: int = 1

    def to_list(self) -> list[int]:
        return [self.epoch, self.index, self.offset]


class StepPlanner:
    """Cuts the training stream into steps of exactly ``tokens_per_step`` positions."""

    def __init__(self, text: StreamText, tokenizer: Any, tokens_per_step: int, cursor: Cursor | None = None):
        self.text, self.tokenizer, self.T = text, tokenizer, int(tokens_per_step)
        self.cursor = cursor or Cursor()
        self._order: tuple[int, np.ndarray] | None = None
        self.forward_tokens = 0

    def _sentence(self, epoch: int, index: int) -> int:
        """The stream's ``index``-th sentence of pass ``epoch`` (pass 0 in corpus-draw order, later ones reshuffled)."""
        if epoch == 0:
            return index
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.text.seed, epoch]).permutation(len(self.text.train)))
        return int(self._order[1][index])

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(int(t) for t in self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def next_step(self) -> list[Sample]:
        """The next step's rows: one :class:`Sample` per position, ``sample_id`` numbering its forwards."""
        rows: list[Sample] = []
        c = self.cursor
        passes_without_rows = forward = 0
        while len(rows) < self.T:
            if c.index >= len(self.text.train):
                c.epoch, c.index, c.offset = c.epoch + 1, 0, 1
                passes_without_rows = passes_without_rows + 1 if not rows else 0
                if passes_without_rows > 1:
                    raise CorpusError("no training sentence has two tokens or more; nothing to train on")
                continue
            ids = self.encode(self.text.train[self._sentence(c.epoch, c.index)])
            last = min(len(ids) - 1, c.offset + self.T - len(rows) - 1)
            rows += [Sample(forward, 0, p, ids) for p in range(c.offset, last + 1)]
            if last >= c.offset:
                self.forward_tokens += last + 1
                forward += 1
            if last >= len(ids) - 1:
                c.index, c.offset = c.index + 1, 1
            else:
                c.offset = last + 1
        return rows


def val_rows(text: StreamText, tokenizer: Any) -> list[Sample]:
    """Every position 1..n-1 of every held-out sentence."""
    out: list[Sample] = []
    for i, sentence in enumerate(text.val):
        ids = tuple(int(t) for t in tokenizer(sentence, add_special_tokens=True)["input_ids"])
        out += [Sample(i, 1, p, ids) for p in range(1, len(ids))]
    return out


def forward_batches(rows: Sequence[Sample], tokens_per_batch: int, max_batch_size: int) -> list[list[int]]:
    """The rows' forwards grouped into length-bucketed batches within a token budget (extraction's planner)."""
    return plan_batches(rows, tokens_per_batch, max_batch_size)


__all__ = ["Cursor", "StepPlanner", "StreamText", "forward_batches", "usable_sentences", "val_rows"]
