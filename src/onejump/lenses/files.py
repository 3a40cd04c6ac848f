"""Files of jumps and lenses: safetensors weights next to a JSON config; nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from torch import nn

from ..errors import NumericalError, ShortcutError
from ..io import sha256_file
from .base import CONFIG_NAME as LENS_CONFIG
from .base import LENS_FORMAT, Lens, read_weights
from .hub import resolve_pretrained
from .jtc import JTCLens, LinearJTC
from .jumps import _BANK_KEYS, JumpBank
from .onejump import OneJump, PerLevelLens
from .tuned_format import import_tuned_lens, is_tuned_lens_folder

FORMAT = "onejump-shortcuts"
VERSION = 1
CONFIG_NAME = "shortcuts.json"
WEIGHTS_NAME = "weights.safetensors"
KINDS = ("nnjtc", "joint", "ojfa", "jtc")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")


class ShortcutFile(NamedTuple):
    """What :func:`load_shortcuts` returns: the module (JumpBank or LinearJTC) and its JSON config."""

    module: nn.Module
    config: dict[str, Any]


def _refuse_pickle_name(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ShortcutError(
            f"refusing {path}: '{path.suffix}' files are pickle-based and can run code when loaded; onejump "
            f"shortcuts are a folder with {CONFIG_NAME} + {WEIGHTS_NAME}"
        )


def _resolve_shortcut_path(path: Path) -> tuple[Path, Path]:
    """(folder, config file) of a shortcut path (the folder, its JSON, or its safetensors)."""
    _refuse_pickle_name(path)
    if path.is_dir():
        return path, path / CONFIG_NAME
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(4)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise ShortcutError(f"refusing {path}: it is a pickle / torch.save archive, which can run code "
                                f"when loaded; onejump shortcuts are safetensors + JSON")
        if path.suffix == ".json":
            return path.parent, path
        if path.suffix == ".safetensors":
            return path.parent, path.parent / CONFIG_NAME
        raise ShortcutError(f"{path} is not a shortcut folder, {CONFIG_NAME} or {WEIGHTS_NAME}")
    raise ShortcutError(f"shortcut path not found: {path}")


def load_shortcuts(path: str | Path, fingerprint: str | None = None) -> ShortcutFile:
    """Load shortcuts written by :func:`save_shortcuts` (a folder, or its JSON file).

    Refuses, with :class:`ShortcutError`: pickle-based files (``.pt``, ``.bin``, ...), a JSON that
    names a weights file outside its folder, a weights file whose sha256, tensor names, shapes,
    rank or dtype do not match the JSON, and (with ``fingerprint``) shortcuts trained for another
    model. NaN/inf weights raise :class:`NumericalError`.
    """
    folder, cfg_path = _resolve_shortcut_path(Path(path))
    config = _read_shortcut_config(folder, cfg_path, fingerprint)
    kind = config["kind"]
    weights = _checked_weights_path(folder, cfg_path, config)
    try:
        H = int(config["hidden_size"])
        J = int(config["num_jumps"])
        levels = [int(x) for x in config["levels"]]
    except (KeyError, TypeError, ValueError):
        raise ShortcutError(f"{cfg_path} lacks hidden_size, num_jumps or levels, or has bad values") from None
    tensors = _read_shortcut_tensors(weights, {"W"} if kind == "jtc" else set(_BANK_KEYS))
    if kind == "jtc":
        W = tensors["W"]
        if W.dim() != 3 or tuple(W.shape) != (J, H + 1, H):
            raise ShortcutError(f"{weights.name}: JTC weights have shape {tuple(W.shape)}, expected {(J, H + 1, H)}")
        return ShortcutFile(LinearJTC(W), config)
    return ShortcutFile(_jump_bank(cfg_path, weights.name, config, tensors, H, J, levels), config)


def _read_config(folder: Path, cfg_path: Path, fmt: str, what: str) -> dict[str, Any]:
    """A folder's JSON config, refused unless it exists, parses and names the expected format."""
    if not cfg_path.is_file():
        raise ShortcutError(f"{folder} is not a {what} folder: {cfg_path.name} missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShortcutError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise ShortcutError(f"{cfg_path} is not an onejump {what} config")
    return config


def _read_shortcut_config(folder: Path, cfg_path: Path, fingerprint: str | None) -> dict[str, Any]:
    """The JSON config, checked for format, version, model fingerprint and kind."""
    config = _read_config(folder, cfg_path, FORMAT, "shortcut")
    if config.get("version") != VERSION:
        raise ShortcutError(f"shortcut format version {config.get('version')} is not supported (expected {VERSION})")
    if fingerprint is not None and config.get("fingerprint") != fingerprint:
        raise ShortcutError(
            f"shortcuts in {folder} were trained for another model (model '{config.get('model')}', weights hash "
            f"{config.get('fingerprint')}); this model's hash is {fingerprint}: retrain them for this model"
        )
    kind = config.get("kind")
    if kind not in KINDS:
        raise ShortcutError(f"{cfg_path}: unknown shortcut kind {kind!r}")
    return config


def _checked_weights_path(folder: Path, cfg_path: Path, config: dict[str, Any]) -> Path:
    """The weights file the config names: inside its folder, not pickle-based, present, sha256 as recorded."""
    weights = (folder / str(config.get("weights", ""))).resolve()
    if weights.parent != folder.resolve():
        raise ShortcutError(f"{cfg_path} names a weights file outside its folder: {config.get('weights')!r}")
    _refuse_pickle_name(weights)
    if not weights.is_file():
        raise ShortcutError(f"shortcut weights missing: {weights}")
    if config.get("sha256") and sha256_file(weights) != config["sha256"]:
        raise ShortcutError(f"shortcut weights {weights.name} are corrupt or were changed (sha256 differs)")
    return weights


def _read_shortcut_tensors(weights: Path, expected: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: exactly the expected names, float32, finite."""
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = set(fh.keys())
            if keys != expected:
                raise ShortcutError(f"{weights.name} holds tensors {sorted(keys)}, expected {sorted(expected)}")
            for k in sorted(keys):
                if fh.get_slice(k).get_dtype() != "F32":
                    raise ShortcutError(f"{weights.name}: tensor '{k}' has dtype {fh.get_slice(k).get_dtype()}, "
                                        "expected F32")
            tensors = {k: fh.get_tensor(k) for k in keys}
    except ShortcutError:
        raise
    except Exception as exc:  # malformed safetensors header
        raise ShortcutError(f"{weights.name} is not a readable safetensors file: {exc}") from None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NumericalError(f"shortcut tensor '{name}' in {weights.name} holds NaN or inf")
    return tensors


def _jump_bank(cfg_path: Path, weights_name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
               H: int, J: int, levels: list[int]) -> JumpBank:
    """The JumpBank of a jump file, its rank, levels and flags checked against the config."""
    rank = config.get("rank")
    if not isinstance(rank, int) or not 1 <= rank <= H:
        raise ShortcutError(f"{cfg_path}: rank {rank!r} is invalid for H={H}")
    if len(levels) != J:
        raise ShortcutError(f"{cfg_path}: {len(levels)} levels for {J} jumps")
    a_shape = tuple(tensors["A"].shape)
    if len(a_shape) == 3 and a_shape[:2] == (J, H) and a_shape[2] != rank:
        raise ShortcutError(f"{weights_name}: jumps have rank {a_shape[2]} but the config says rank {rank}")
    if a_shape != (J, H, rank):  # before the bank of the config's size is allocated
        raise ShortcutError(f"{weights_name}: jumps have shape {a_shape}, but {cfg_path.name} says {J} jumps of "
                            f"width {H} and rank {rank}")
    residual = config.get("residual", False)
    if not isinstance(residual, bool):
        raise ShortcutError(f"{cfg_path}: 'residual' must be true or false, got {residual!r}")
    bank = JumpBank(J, H, rank, levels=levels, eps=float(config.get("bn_eps") or 1e-5),
                    momentum=float(config.get("bn_momentum") or 0.1), residual=residual)
    bank.load_tensors(tensors)
    if torch.any(bank.running_var < 0):
        raise ShortcutError(f"{weights_name}: negative BatchNorm running variance")
    return bank.eval()


def read_lens_folder(folder: Path, lm: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a lens folder written by :meth:`Lens.save_pretrained`, checked against ``lm``."""
    _refuse_pickle_name(folder)
    cfg_path = folder / LENS_CONFIG
    config = _read_config(folder, cfg_path, LENS_FORMAT, "lens")
    if config.get("fingerprint") != lm.fingerprint:
        raise ShortcutError(f"the lens in {folder} was trained for another model (model '{config.get('model')}', "
                            f"weights hash {config.get('fingerprint')}); this model's hash is {lm.fingerprint}")
    weights = (folder / str(config.get("weights", ""))).resolve()
    if weights.parent != folder.resolve():
        raise ShortcutError(f"{cfg_path} names a weights file outside its folder: {config.get('weights')!r}")
    _refuse_pickle_name(weights)
    if not weights.is_file():
        raise ShortcutError(f"lens weights missing: {weights}")
    if sha256_file(weights) != config.get("sha256"):
        raise ShortcutError(f"lens weights {weights.name} are corrupt or were changed (sha256 differs)")
    try:
        tensors = read_weights(weights)
    except Exception as exc:  # malformed safetensors header
        raise ShortcutError(f"{weights.name} is not a readable safetensors file: {exc}") from None
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != config.get("tensors"):
        raise ShortcutError(f"{weights.name} holds tensors {shapes}, the config says {config.get('tensors')}")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NumericalError(f"lens tensor '{name}' in {weights.name} holds NaN or inf")
    return config, tensors


def legacy_lens(folder: Path, lm: Any):
    """A lens from a shortcut folder (``shortcuts.json``): what run folders held before lens files."""
    module, config = load_shortcuts(folder, fingerprint=lm.fingerprint)
    extra = config.get("extra") or {}
    kind = config["kind"]
    if kind == "jtc":
        return JTCLens(lm, module, extra=extra)
    if kind == "nnjtc":
        return PerLevelLens(lm, module, extra=extra)
    trained_at = -1 if kind == "joint" else config.get("chosen_jump")
    if not isinstance(trained_at, int):
        raise ShortcutError(f"{folder} records no chosen jump")
    return OneJump(lm, module, trained_at=trained_at, extra=extra)


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
        raise ShortcutError(f"loading '{folder}' needs the model it reads (Lens.from_pretrained(source, lm)); only "
                            "a shipped lens's id loads its model itself")
    folder = resolve_pretrained(folder, revision=revision, subfolder=subfolder)
    if is_tuned_lens_folder(folder):
        lens = import_tuned_lens(folder, lm)
        if not isinstance(lens, cls):
            raise ShortcutError(f"{folder} holds a tuned lens, not a {cls.__name__}")
        return lens
    if not (folder / LENS_CONFIG).is_file() and (folder / CONFIG_NAME).is_file():
        lens = legacy_lens(folder, lm)
        if cls is not Lens and not isinstance(lens, cls):
            raise ShortcutError(f"{folder} holds a '{lens.kind}' lens, not a {cls.__name__}")
        return lens
    config, tensors = read_lens_folder(folder, lm)
    kind = config["kind"]
    if kind not in Lens.kinds:
        raise ShortcutError(f"{folder}: unknown lens kind '{kind}' (known: {', '.join(sorted(Lens.kinds))})")
    target = Lens.kinds[kind]
    if cls is not Lens and not issubclass(target, cls):
        raise ShortcutError(f"{folder} holds a '{kind}' lens, not a {cls.__name__}")
    lens = target.from_config(lm, config, tensors)
    lens.extra = dict(config.get("extra") or {})
    return lens

