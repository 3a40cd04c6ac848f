"""The lens interface: anything that turns a hidden state at an exit level into next-token logits.

A lens is a small ``nn.Module`` with the model's head bound at construction and one call,
``lens(h, level) -> logits``. ``lens.transform(h, level)`` is the representation it hands to the
head (its estimate of h^K); ``forward`` may take an exact shortcut through the head (the rank-r
head of a low-rank jump) but always equals ``head(transform(h, level))`` up to float rounding.

Saved form: a folder with ``config.json`` (kind, model, fingerprint, shapes) next to
``weights.safetensors`` and a ``README.md`` model card; :meth:`Lens.load` checks the model's
fingerprint and builds the right class from the config's ``kind``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from torch import nn

from ..errors import LensFileError
from ..io import atomic_write_text, save_safetensors, sha256_file

LENS_FORMAT = "onejump-lens"
LENS_VERSION = 1
@dataclass
class LevelLogits:
    """A block of a lens's logits to score: ``to_logits(x[rows])`` for rows of ``x``.

    ``level`` None: ``x`` holds every exit level of a chunk, row r is (sample r // K, level r % K);
    else ``x`` holds the chunk's n rows at that level. ``lowrank``: the logits come through a rank-r
    head (cheap per row, bound by passes over the logits: scored in smaller blocks)."""

    to_logits: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    level: int | None = None
    lowrank: bool = False


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"


class Lens(nn.Module):
    """Base class of every hidden-state-to-logits reader.

    Subclasses set ``kind`` and implement :meth:`transform`; those with weights implement
    :meth:`lens_config` and :meth:`from_config`. ``lm`` (a :class:`onejump.LoadedModel`) is held as a
    plain attribute, not a submodule, so ``state_dict()`` holds only the lens's own tensors.
    """

    kind: ClassVar[str] = ""
    kinds: ClassVar[dict[str, type[Lens]]] = {}
    # Reading and uploading live in lenses.files / lenses.hub, which build lenses of every kind;
    # the package plugs them in here (onejump/lenses/__init__.py), so this module imports none of them.
    io: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Lens.kinds[cls.kind] = cls

    def __init__(self, lm: Any):
        super().__init__()
        object.__setattr__(self, "lm", lm)
        self.extra: dict[str, Any] = {}  # provenance kept with the file (training history, stage keys)

    # ---- shape of the model ------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.lm.num_blocks

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.lm.adapter.vocab_size

    def check_level(self, level: int) -> int:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.num_blocks:
            raise LensFileError(f"exit level must be in 0..{self.num_blocks - 1}, got {level!r}")
        return level

    def check_hidden(self, h: torch.Tensor) -> None:
        if h.shape[-1] != self.hidden_size:
            raise LensFileError(f"hidden width {h.shape[-1]} does not match the model's H={self.hidden_size}")

    # ---- the call ----------------------------------------------------------------------------
    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """The lens's estimate of h^K from ``h`` = h^level, shape (..., H)."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Next-token logits (..., V) read from ``h`` = h^level through the model's head."""
        return self.lm.adapter.head(self.transform(h, level))

    # ---- scoring -----------------------------------------------------------------------------
    def level_logits(self, h: torch.Tensor, full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """The lens at every exit level of a chunk ``h`` (n, K, H) as blocks of logits to score;
        ``full_head``: the model's head on hidden states (float32 logits).

        This default reads the lens level by level through its own call; a lens with a cheaper exact
        path (every level in one product, a rank-r head) overrides it.
        """
        for k in range(h.shape[1]):
            yield LevelLogits(lambda x, k=k: self(x, k).float(), h[:, k], k)

    # ---- accounting --------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        """Numbers held at inference (weights and BatchNorm statistics), as the paper counts them."""
        return sum(int(t.numel()) for t in self.state_dict().values())

    def transform_cost(self) -> int:
        """Multiply-adds per token of :meth:`transform`."""
        return 0

    def logits_cost(self) -> int:
        """Multiply-adds per token of ``lens(h, level)``, the head included."""
        return self.transform_cost() + self.hidden_size * self.vocab_size

    # ---- files -------------------------------------------------------------------------------
    def lens_config(self) -> dict[str, Any]:
        """What besides the weights is needed to rebuild the lens (JSON)."""
        return {}

    @classmethod
    def from_config(cls, lm: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Lens:
        return cls(lm)

    def save_pretrained(self, folder: str | Path, *, card: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` + a ``README.md`` model card to ``folder`` (created),
        atomically per file. ``card`` adds card information (see :mod:`onejump.lenses.card`: base model,
        licence, training data, recipe, command, evaluation); it is kept in ``extra["card"]``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if card:
            self.extra = {**self.extra, "card": Lens.io.card_info(self, card)}
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        (folder / CONFIG_NAME).unlink(missing_ok=True)  # a folder without its config is never taken for a lens
        save_safetensors(tensors, folder / WEIGHTS_NAME)
        config = {"format": LENS_FORMAT, "version": LENS_VERSION, "kind": self.kind,
                  "model": self.lm.name, "fingerprint": self.lm.fingerprint,
                  "num_blocks": self.num_blocks, "hidden_size": self.hidden_size,
                  "parameters": self.num_parameters, **self.lens_config(), "extra": self.extra,
                  "weights": WEIGHTS_NAME, "sha256": sha256_file(folder / WEIGHTS_NAME),
                  "tensors": {k: list(v.shape) for k, v in tensors.items()}}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=1))
        Lens.io.write_card(self, folder)
        return folder

    save = save_pretrained

    @classmethod
    def from_pretrained(cls, source: str | Path, lm: Any = None, *, revision: str | None = None,
                        subfolder: str | None = None) -> Lens:
        """Load a lens for the model ``lm`` (its fingerprint must match the file's) from a folder; a lens
        shipped with onejump (``"pretrained"``: the one for ``lm``; ``"smollm2-135m"``: that model's, whose
        model is loaded when ``lm`` is omitted); or a Hugging Face hub id (``owner/name``, or
        ``owner/name/subfolder`` for one of a repository's lenses; ``revision`` optional). A tuned-lens
        folder (``config.json`` + ``params.pt``) is imported as a :class:`~onejump.lenses.tuned.TunedLens`;
        a folder in the shortcut format (``shortcuts.json``) is refused, with what to do."""
        return Lens.io.load(cls, source, lm, revision=revision, subfolder=subfolder)

    load = from_pretrained

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload to a Hugging Face hub model repository (see :func:`onejump.lenses.hub.push_to_hub`)."""
        return Lens.io.push(self, repo_id, **kwargs)

    def extra_repr(self) -> str:
        return f"model={self.lm.name}, K={self.num_blocks}, H={self.hidden_size}, parameters={self.num_parameters}"


class LogitLens(Lens):
    """The logit lens: the model's head applied to the hidden state as it is (no parameters)."""

    kind = "logit"

    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        self.check_hidden(h)
        return h

    def level_logits(self, h: torch.Tensor, full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """Every level in one pass through the head."""
        n, K, H = h.shape
        yield LevelLogits(full_head, h.reshape(n * K, H))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (never pickle)."""
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}
