"""Files of jumps and lenses: safetensors weights next to a JSON config; nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import LensFileError, NumericalError
from ..io import sha256_file
from .base import CONFIG_NAME as LENS_CONFIG
from .base import LENS_FORMAT, WEIGHTS_NAME, Lens, read_weights
from .hub import resolve_pretrained
from .tuned_format import import_tuned_lens, is_tuned_lens_folder

# The file of the shortcut format (jumps saved without a lens config.json): refused, not read.
OLD_CONFIG_NAME = "shortcuts.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")


def _refuse_pickle_name(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LensFileError(
            f"refusing {path}: '{path.suffix}' files are pickle-based and can run code when loaded; onejump "
            f"lenses are a folder with {LENS_CONFIG} + {WEIGHTS_NAME}"
        )


def _read_config(folder: Path, cfg_path: Path, fmt: str, what: str) -> dict[str, Any]:
    """A folder's JSON config, refused unless it exists, parses and names the expected format."""
    if not cfg_path.is_file():
        raise LensFileError(f"{folder} is not a {what} folder: {cfg_path.name} missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LensFileError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise LensFileError(f"{cfg_path} is not an onejump {what} config")
    return config


def read_lens_folder(folder: Path, lm: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a lens folder written by :meth:`Lens.save_pretrained`, checked against ``lm``."""
    _refuse_pickle_name(folder)
    cfg_path = folder / LENS_CONFIG
    config = _read_config(folder, cfg_path, LENS_FORMAT, "lens")
    if config.get("fingerprint") != lm.fingerprint:
        raise LensFileError(f"the lens in {folder} was trained for another model (model '{config.get('model')}', "
                            f"weights hash {config.get('fingerprint')}); this model's hash is {lm.fingerprint}")
    weights = (folder / str(config.get("weights", ""))).resolve()
    if weights.parent != folder.resolve():
        raise LensFileError(f"{cfg_path} names a weights file outside its folder: {config.get('weights')!r}")
    _refuse_pickle_name(weights)
    if not weights.is_file():
        raise LensFileError(f"lens weights missing: {weights}")
    if sha256_file(weights) != config.get("sha256"):
        raise LensFileError(f"lens weights {weights.name} are corrupt or were changed (sha256 differs)")
    try:
        tensors = read_weights(weights)
    except Exception as exc:  # malformed safetensors header
        raise LensFileError(f"{weights.name} is not a readable safetensors file: {exc}") from None
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != config.get("tensors"):
        raise LensFileError(f"{weights.name} holds tensors {shapes}, the config says {config.get('tensors')}")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NumericalError(f"lens tensor '{name}' in {weights.name} holds NaN or inf")
    return config, tensors


def load_lens(cls: type, folder: str | Path, lm: Any = None, *, revision: str | None = None,
              subfolder: str | None = None) -> Any:
    """Load a lens for the model ``lm`` (its fingerprint must match the file's) from a folder, a lens
    shipped with the package (``pretrained``, ``<model alias>`` or ``<alias>/<name>``; without ``lm`` the
    alias's model is loaded) or a Hugging Face hub id (``owner/name``, ``owner/name/subfolder``,
    ``revision`` optional); a tuned-lens folder (``config.json`` + ``params.pt``) is imported as a
    :class:`~onejump.lenses.tuned.TunedLens`."""
    from . import shipped

    if not Path(folder).exists() and shipped.is_shipped_id(str(folder)):
        found = shipped.find(str(folder), lm)
        if lm is None:
            from ..model.loading import load_model

            lm = load_model(found.model)
        folder = found.path
    elif lm is None:
        raise LensFileError(f"loading '{folder}' needs the model it reads (Lens.from_pretrained(source, lm)); only "
                            "a shipped lens's id loads its model itself")
    folder = resolve_pretrained(folder, revision=revision, subfolder=subfolder)
    if is_tuned_lens_folder(folder):
        lens = import_tuned_lens(folder, lm)
        if not isinstance(lens, cls):
            raise LensFileError(f"{folder} holds a tuned lens, not a {cls.__name__}")
        return lens
    if not (folder / LENS_CONFIG).is_file() and (folder / OLD_CONFIG_NAME).is_file():
        raise LensFileError(f"{folder} holds jumps in the old shortcut format ({OLD_CONFIG_NAME}), which onejump no "
                            "longer reads: train them again (`onejump train --out RUN` on their run folder)")
    config, tensors = read_lens_folder(folder, lm)
    kind = config["kind"]
    if kind not in Lens.kinds:
        raise LensFileError(f"{folder}: unknown lens kind '{kind}' (known: {', '.join(sorted(Lens.kinds))})")
    target = Lens.kinds[kind]
    if cls is not Lens and not issubclass(target, cls):
        raise LensFileError(f"{folder} holds a '{kind}' lens, not a {cls.__name__}")
    lens = target.from_config(lm, config, tensors)
    lens.extra = dict(config.get("extra") or {})
    return lens

