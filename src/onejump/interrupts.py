"""What an interrupt leaves behind, said truthfully: the innermost piece of work running says it.

A long step (reading a corpus, training a lens) wraps itself in :func:`on_interrupt` with a sentence
saying what is kept if it is interrupted now, and updates it as it goes (``"epochs 1-3 are kept
..."``). The command line's signal handler reads :func:`current` at the moment the signal arrives,
so the message is the one of the work that was actually running, not a guess made at the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Kept:
    """The message of one running step; :meth:`say` replaces it as more is kept. ``alone``: the
    message says all there is (nothing else was written yet); otherwise it is said before what
    the steps around it keep."""

    def __init__(self, message: str, alone: bool = False) -> None:
        self.message, self.alone = message, alone

    def say(self, message: str) -> None:
        self.message = message


# The steps running now, innermost last: context-local, so that what one computation keeps is never
# another's (the signal handler runs in the main thread's context, where the command's steps run).
_ACTIVE: ContextVar[tuple[Kept, ...]] = ContextVar("onejump_interrupt_steps", default=())


@contextmanager
def on_interrupt(message: str, *, alone: bool = False) -> Iterator[Kept]:
    """While the block runs, an interrupt is reported with ``message`` (or what :meth:`Kept.say` set)."""
    kept = Kept(message, alone)
    token = _ACTIVE.set((*_ACTIVE.get(), kept))
    try:
        yield kept
    finally:
        _ACTIVE.reset(token)


def current(default: str) -> str:
    """What an interrupt now keeps: the innermost running step's message, before ``default`` (what
    the command keeps) unless that step speaks alone; ``default`` when no step is running."""
    steps = _ACTIVE.get()
    if not steps:
        return default
    inner = steps[-1]
    return inner.message if inner.alone else f"{inner.message}; {default}"


__all__ = ["Kept", "current", "on_interrupt"]
