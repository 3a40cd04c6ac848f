"""Corpora: text cleaning, the offline Wikipedia sample, and loaders for local files and hub datasets."""

from .loaders import CorpusSplit, Sentence, load_sentences, split_sentences
from .offline import OFFLINE_NAME, prepare_offline_corpus

__all__ = ["OFFLINE_NAME", "CorpusSplit", "Sentence", "load_sentences", "prepare_offline_corpus", "split_sentences"]
