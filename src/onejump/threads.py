"""How many threads onejump computes with, so that a run on a shared machine does not collapse.

PyTorch's CPU build runs its kernels on GNU OpenMP, whose idle threads spin at every barrier. When
another process holds one of the cores, the spinning thread and the preempted one wait on each
other, and a training epoch slows down several times over. Two measures, both overridable:

1. Passive waiting: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep instead of spinning). OpenMP
   reads it once, when torch loads it, so this module sets it on import, which ``onejump``'s
   ``__init__`` does before it imports torch. It is only a default: a value the user set is kept,
   and nothing is changed when torch was imported first.
2. A thread count chosen once when a command starts (:func:`apply_thread_policy`): ``auto`` (the
   default) takes the CPUs this process may use (its affinity mask, which torch's own default
   ignores), ``free`` those minus the CPUs other processes keep busy (measured over a fraction of
   a second from ``/proc/stat``, at least 1), a number fixes it. ``--threads`` or
   ``ONEJUMP_THREADS`` choose; ``OMP_NUM_THREADS`` set by the user is respected by ``auto``.

``benchmarks/threads.py`` measures them alone and beside a busy process: passive waiting is what
keeps a run from collapsing; ``free`` is the polite choice on a machine shared with long jobs, at the
cost of the run's own threads (``auto`` takes every CPU it may use).
"""

from __future__ import annotations

import os
import sys
import time

from .limits import thread_cap

THREADS_ENV = "ONEJUMP_THREADS"


def prefer_passive_wait() -> bool:
    """Default ``OMP_WAIT_POLICY`` to PASSIVE if OpenMP is not loaded yet; whether it was set."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int, int] | None:
    """(busy, total, number of CPUs) jiffies from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]
    ncpu = sum(1 for ln in lines[1:] if ln.startswith("cpu"))
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8]), ncpu  # guest time is already counted in user


def busy_cpus(window: float = 0.3) -> float | None:
    """CPUs kept busy by the whole machine over ``window`` seconds (this process sleeps meanwhile)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * second[2]


def choose_threads(requested: str | int | None = None) -> tuple[int, str]:
    """The thread count to use and why; ``requested`` (or ``ONEJUMP_THREADS``): ``auto``, ``free`` or a number."""
    requested = requested if requested is not None else os.environ.get(THREADS_ENV, "auto")
    if str(requested) not in ("auto", "free"):
        try:
            n = int(requested)
        except ValueError:
            n = 0
        cap = thread_cap(usable_cpus())
        if not 1 <= n <= cap:
            from .errors import ConfigError

            raise ConfigError(f"threads must be 'auto', 'free' or a number from 1 to {cap} (4 per usable CPU, "
                              f"at least 64), got '{requested}'")
        return n, "asked for"
    cpus = usable_cpus()
    if str(requested) == "auto":
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            # the variable is honoured as OpenMP would, within the same cap as --threads
            return max(1, min(int(os.environ["OMP_NUM_THREADS"]), thread_cap(cpus))), "OMP_NUM_THREADS"
        return cpus, f"{cpus} usable CPUs"
    busy = busy_cpus()
    if busy is None:
        return cpus, "all usable CPUs (load unknown)"
    free = cpus - int(busy + 0.5)
    return max(1, min(cpus, free)), f"{cpus} usable CPUs, {busy:.1f} busy"


def apply_thread_policy(requested: str | int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads by :func:`choose_threads`; return (threads, reason)."""
    import torch

    n, why = choose_threads(requested)
    torch.set_num_threads(n)
    return n, why


prefer_passive_wait()  # on import: it has to happen before torch loads OpenMP
