"""The peak-RSS probe: a block's own peak, nested blocks, and the fallback where the mark cannot be reset."""

import numpy as np
import pytest
import torch

from onejump import memory
from onejump.memory import PeakProbe, module_mib, process_peak_mib

SIZE_MIB = 160


def _allocate(mib: int) -> np.ndarray:
    return np.ones(mib * 2**20 // 8)  # np.ones writes every page, so all of it is resident


def _file_backed_mib() -> float:
    """Resident file-backed pages (code, mapped files): the kernel may drop them under pressure."""
    return memory._status_mib("RssFile") or 0.0


def _allocate_counting_reclaim(mib: int) -> float:
    """Allocate and free ``mib`` MiB; the file-backed MiB the kernel reclaimed meanwhile.

    On a machine short of memory the kernel can drop mapped library pages while the array is
    written, so the RSS grows by less than the array; the tests allow for exactly that much.
    """
    before = _file_backed_mib()
    a = _allocate(mib)
    lost = max(0.0, before - _file_backed_mib())
    del a
    return lost


def test_peak_of_a_block_holds_its_allocation():
    with PeakProbe() as probe:
        lost = _allocate_counting_reclaim(SIZE_MIB)
    if not probe.exact:
        pytest.skip("this system cannot reset the RSS high-water mark")
    grew = probe.peak_mib - probe.start_mib
    assert SIZE_MIB * 0.9 - lost <= grew <= SIZE_MIB * 1.3, (grew, lost)


def test_a_later_block_does_not_inherit_an_earlier_peak():
    with PeakProbe() as big:
        a = _allocate(SIZE_MIB)
        del a
    with PeakProbe() as small:
        b = _allocate(8)
        del b
    if not small.exact:
        pytest.skip("this system cannot reset the RSS high-water mark")
    assert small.peak_mib - small.start_mib < SIZE_MIB / 4
    assert big.peak_mib - small.peak_mib > SIZE_MIB * 0.7
    assert process_peak_mib() >= big.peak_mib  # the process peak survives the reset


def test_outer_block_keeps_the_peak_of_an_inner_one():
    with PeakProbe() as outer:
        with PeakProbe() as inner:
            lost = _allocate_counting_reclaim(SIZE_MIB)
        with PeakProbe():
            pass  # an inner reset after the peak must not lower the outer's
    assert outer.peak_mib >= inner.peak_mib
    if outer.exact:
        assert outer.peak_mib - outer.start_mib >= SIZE_MIB * 0.9 - lost


def test_fallback_is_the_process_peak_so_far(monkeypatch):
    with PeakProbe():
        a = _allocate(SIZE_MIB)
        del a
    before = process_peak_mib()
    monkeypatch.setattr(memory, "_CLEAR_REFS", memory.Path("/nonexistent/clear_refs"))
    with PeakProbe() as probe:
        pass
    assert not probe.exact
    assert probe.peak_mib >= before


def test_module_size_counts_shared_parameters_once():
    lin = torch.nn.Linear(256, 512, bias=False)
    tied = torch.nn.ModuleDict({"a": lin, "b": lin})
    assert module_mib(tied) == pytest.approx(256 * 512 * 4 / 2**20)
    assert module_mib(lin.to(torch.bfloat16)) == pytest.approx(256 * 512 * 2 / 2**20)
