"""Writing shortcut folders in the format run folders used before lens files (``shortcuts.json``),
so that the tests can check that such folders still load. onejump itself only reads this format."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from onejump.errors import NumericalError, ShortcutError
from onejump.io import atomic_write_text, sha256_file
from onejump.lenses.files import CONFIG_NAME, FORMAT, KINDS, VERSION, WEIGHTS_NAME, _refuse_pickle_name
from onejump.lenses.jtc import LinearJTC
from onejump.lenses.jumps import JumpBank


def save_shortcuts(path: str | Path, bank: nn.Module, *, kind: str, model: str, fingerprint: str,
                   levels: Sequence[int], rank: int | None, chosen_jump: int | None = None,
                   num_blocks: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write shortcuts to the folder ``path`` (created): ``weights.safetensors`` and ``shortcuts.json``.

    ``kind`` is ``"nnjtc"`` (the K per-level jumps), ``"joint"`` (one jump trained on all levels),
    ``"ojfa"`` (the chosen jump alone) or ``"jtc"`` (a :class:`LinearJTC`, ``rank=None``).
    ``levels`` are the levels the jumps were trained at (``[-1]`` for the joint jump; the exit
    levels for JTC). ``fingerprint`` is the model's weights hash; loading checks it. Files are
    written to temporary names and renamed. Returns the folder.
    """
    folder = Path(path)
    _refuse_pickle_name(folder)
    if kind not in KINDS:
        raise ShortcutError(f"unknown shortcut kind '{kind}'; use one of {', '.join(KINDS)}")
    if kind == "jtc":
        if not isinstance(bank, LinearJTC):
            raise ShortcutError("kind 'jtc' needs a LinearJTC")
        tensors = {"W": bank.W.detach().to("cpu", torch.float32).contiguous()}
        hidden, n_jumps, rank = bank.hidden_size, bank.num_levels, None
        k_default = bank.num_levels
    else:
        if not isinstance(bank, JumpBank):
            raise ShortcutError(f"kind '{kind}' needs a JumpBank")
        if rank != bank.rank:
            raise ShortcutError(f"rank {rank} given but the bank has rank {bank.rank}")
        if len(levels) != bank.num_jumps:
            raise ShortcutError(f"{len(levels)} levels given for {bank.num_jumps} jumps")
        if kind in ("joint", "ojfa") and bank.num_jumps != 1:
            raise ShortcutError(f"kind '{kind}' holds exactly one jump, the bank has {bank.num_jumps}")
        tensors = bank.tensors()
        hidden, n_jumps = bank.hidden_size, bank.num_jumps
        k_default = bank.num_jumps if kind == "nnjtc" else None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NumericalError(f"shortcut tensor '{name}' holds NaN or inf; not saved")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_NAME}.")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, folder / WEIGHTS_NAME)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": model,
        "fingerprint": fingerprint,
        "hidden_size": hidden,
        "num_blocks": num_blocks if num_blocks is not None else k_default,
        "num_jumps": n_jumps,
        "levels": [int(x) for x in levels],
        "rank": rank,
        "chosen_jump": chosen_jump,
        "bn_eps": getattr(bank, "eps", None),
        "bn_momentum": getattr(bank, "momentum", None),
        "residual": bool(getattr(bank, "residual", False)),
        "weights": WEIGHTS_NAME,
        "sha256": sha256_file(folder / WEIGHTS_NAME),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "parameters": sum(int(v.numel()) for v in tensors.values()),
        "extra": extra or {},
    }
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=1))
    return folder


