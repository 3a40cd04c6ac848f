"""Training state saved as it goes, so that an interrupted training resumes where it stopped.

A checkpoint is one safetensors file: the tensors (weights, optimizer moments, random generator
states) and, in its metadata, a JSON document (counters, history) and the key of the training it
belongs to (store, model, configuration). It is written under a temporary name and renamed, so a
kill leaves the previous checkpoint or the new one, never half of one. A file whose key is another
training's, or that cannot be read, is ignored (training starts from the beginning) and replaced.
Resuming restores every piece of state the remaining steps read, so the result is the one an
uninterrupted run gives, bit for bit (on the same device and thread count).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

_KEY = "onejump_checkpoint_key"
_STATE = "onejump_checkpoint_state"


class Checkpoint:
    """The checkpoint file ``path`` of the training identified by ``key``."""

    def __init__(self, path: str | Path, key: str) -> None:
        self.path, self.key = Path(path), str(key)
        self.failed = False

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(tensors, state)`` of this training's checkpoint, or None (none, another training's, unreadable)."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get(_KEY) != self.key:
                    return None
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            state = json.loads(meta[_STATE])
        except Exception:  # noqa: BLE001 - a damaged file is as good as none: train from the start
            return None
        return tensors, state

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> bool:
        """Write the checkpoint atomically (temporary file, fsync, rename); False when it cannot be written.

        A checkpoint only saves time: when the disk is full or the folder is not writable, training
        goes on without one (the previous checkpoint, if any, is removed: it does not match the training's state) and
        no further one is tried."""
        from safetensors.torch import save_file

        if self.failed:
            return False
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file(plain, str(tmp), metadata={_KEY: self.key, _STATE: json.dumps(state)})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except Exception:  # noqa: BLE001 - OSError, or safetensors' own error for a failed write (full disk)
            self.failed = True
            self.clear()
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - a folder gone read-only; the key keeps a stale file unused
            pass


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as named tensors and a JSON-able rest (its parameter groups)."""
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{name}": (v if torch.is_tensor(v) else torch.tensor(v))
               for i, slot in sd["state"].items() for name, v in slot.items() if v is not None}
    slots = {str(i): sorted(name for name, v in s.items() if v is not None) for i, s in sd["state"].items()}
    empty = {str(i): sorted(name for name, v in s.items() if v is None) for i, s in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "slots": slots, "empty": empty}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_tensors` saved."""
    state = {int(i): {name: tensors[f"opt.{i}.{name}"] for name in names} for i, names in rest["slots"].items()}
    for i, names in rest.get("empty", {}).items():  # SGD without momentum keeps None buffers
        state.setdefault(int(i), {}).update(dict.fromkeys(names))
    # the fresh optimizer's groups, with the numbers a schedule may have changed (lr) taken from the saved ones
    groups = opt.state_dict()["param_groups"]
    for group, saved in zip(groups, rest["param_groups"]):
        for name, value in group.items():
            if name != "params" and isinstance(value, (int, float)) and not isinstance(value, bool):
                group[name] = saved.get(name, value)
    opt.load_state_dict({"state": state, "param_groups": groups})


def generator_tensor(gen: torch.Generator) -> torch.Tensor:
    return gen.get_state()


def load_generator(gen: torch.Generator, state: torch.Tensor) -> None:
    gen.set_state(state.to(torch.uint8))


__all__ = ["Checkpoint", "generator_tensor", "load_generator", "load_optimizer", "optimizer_tensors"]
