"""Shared test set-up."""

import os

import pytest
import torch


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
