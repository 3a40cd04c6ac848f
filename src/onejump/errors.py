"""Exceptions raised by onejump.

Every error a user can act on is a subclass of :class:`OneJumpError`; the CLI catches it,
prints its message on one line and exits non-zero.
"""

from __future__ import annotations


class OneJumpError(Exception):
    """Base class of every error onejump raises on purpose."""


class ModelLoadError(OneJumpError):
    """A model could not be found, loaded or understood."""


class UnsupportedArchitectureError(ModelLoadError):
    """The architecture adapter could not find a part of the model it needs."""


class ArchitectureMismatchError(UnsupportedArchitectureError):
    """The adapter's parts do not reproduce the model's own logits or levels on the load-time probe."""


class ChecksumError(ModelLoadError):
    """A downloaded or assembled model file does not have its pinned size or sha256."""


class DiskFullError(ModelLoadError):
    """The disk filled up while a model file was written into the cache (nothing half-written is kept)."""


class CorpusError(OneJumpError):
    """A corpus is missing, unreadable, too small or otherwise unusable."""


class StoreError(OneJumpError):
    """A hidden-state store is missing, truncated, corrupt or belongs to another model/run."""


class LensFileError(OneJumpError):
    """A lens file or configuration is invalid or does not match the model."""


class NumericalError(OneJumpError):
    """NaN or inf found in hidden states, shortcuts or losses."""


class ConfigError(OneJumpError):
    """An argument or option is out of its valid range."""


class StageError(OneJumpError):
    """A stage of a run folder is missing, superseded by a change to what it was made from, or carries no
    record this onejump can check (the message names the command to run)."""
