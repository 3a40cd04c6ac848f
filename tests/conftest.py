"""Shared test set-up."""

import os
import random

import pytest
import torch

from .tiny import tiny_model, tiny_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One thread, here and in the subprocesses tests start.

    Tiny tensors run fastest on one thread, OpenMP threads thrash when the machine is shared, and
    results are only bit-identical at equal thread counts (float reductions), which the
    determinism and resume tests compare across processes.
    """
    n = torch.get_num_threads()
    old = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random-init Llama saved as a model folder (what ``--model PATH`` loads)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small local text corpus, one sentence a line."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + "." for _ in range(80)]
    path.write_text("\n".join(lines) + "\n")
    return path
