"""Peak resident memory (RSS) of a block of work.

On Linux the kernel keeps a per-process high-water mark of resident memory (``VmHWM`` in
``/proc/self/status``) that writing ``5`` to ``/proc/self/clear_refs`` resets to the current RSS,
so a block's own peak is read by resetting the mark before it and reading it after. Where that is
not possible (another OS, or no permission to write ``clear_refs``), the only figure left is the
process's peak so far (``getrusage``'s ``ru_maxrss``), and the probe says so (``exact=False``).

Probes nest: a probe that resets the mark first hands the peak reached so far to every probe still
open, so an outer block's peak is never lost to an inner reset; :func:`process_peak_mib` stays the
peak of the whole process.
"""

from __future__ import annotations

import resource
import sys
import weakref
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_open: weakref.WeakSet = weakref.WeakSet()  # probes started and not stopped (a dropped one goes away)
_process_peak = 0.0  # MiB: the highest mark read before a reset


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB, or None where unreadable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rusage_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


def _mark_mib() -> float:
    """The current high-water mark (since the last reset), or the process peak where there is none."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else _rusage_peak_mib()


def process_peak_mib() -> float:
    """Peak RSS of this process since it started, MiB (resets by probes included)."""
    return max(_process_peak, _mark_mib())


def current_rss_mib() -> float | None:
    """Resident memory now, MiB (None where ``/proc`` is not available)."""
    return _status_mib("VmRSS")


def _reset_mark() -> bool:
    """Reset the high-water mark to the current RSS, first handing the mark to the open probes."""
    global _process_peak
    mark = _mark_mib()
    _process_peak = max(_process_peak, mark)
    for probe in list(_open):
        probe._seen = max(probe._seen, mark)
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakProbe:
    """Peak RSS of a block: ``with PeakProbe() as p: ...``, then ``p.peak_mib``.

    ``exact``: True when the mark was reset at the start (the block's own peak); False when it is
    the process's peak so far (it may predate the block). ``start_mib``: RSS when the block began.
    """

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self.start_mib: float | None = None
        self.exact = False
        self._seen = 0.0

    def start(self) -> PeakProbe:
        self.exact = _reset_mark()
        self.start_mib = current_rss_mib()
        self._seen = 0.0
        _open.add(self)
        return self

    def stop(self) -> float:
        """End the block; its peak RSS in MiB."""
        _open.discard(self)
        mark = _mark_mib() if self.exact else process_peak_mib()
        self.peak_mib = max(self._seen, mark)
        for probe in list(_open):  # the outer blocks saw this peak too
            probe._seen = max(probe._seen, self.peak_mib)
        return self.peak_mib

    def __enter__(self) -> PeakProbe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def module_mib(module) -> float:
    """Bytes of a torch module's parameters (each shared tensor once), in MiB: the model's own size."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
