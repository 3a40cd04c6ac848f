"""Exchange with tuned-lens (AlignmentResearch/tuned-lens): its folder format, both ways.

A tuned-lens folder holds ``config.json`` (``base_model_name_or_path``, ``d_model``,
``num_hidden_layers``, ``bias``, ``base_model_revision``, ``unembed_hash``, ``lens_type``) and
``params.pt``, a ``torch.save`` of the translators' state dict: ``"{k}.weight"`` (H, H) and
``"{k}.bias"`` (H,) for k = 0..num_hidden_layers-1, translator k reading ``hidden_states[k]``
(onejump's level k) as ``h + h @ weight.T + bias``. tuned-lens's ``TunedLens.from_model_and_pretrained``
loads such a folder given its path.

Any affine lens is such a translator per level:

- a tuned lens maps 1:1;
- a residual jump ``h + BN(h) A B`` is exactly a translator of rank r once its eval-mode
  BatchNorm is folded: with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``,
  ``h + (h diag(s) + t) A B`` is ``h + h M + c`` with ``M = diag(s) A B`` and ``c = t A B``;
- a plain jump ``BN(h) A B`` is ``h + h (M - I) + c``;
- a single jump reused at every level (OJFA) is the same translator K times.

Export writes ``onejump.json`` beside the two files (tuned-lens ignores it) with the model's
fingerprint, so an import onto another model is refused. ``params.pt`` is the one pickle-based file
onejump touches: it is written with ``torch.save`` for tuned-lens and read only with
``torch.load(weights_only=True)``, which refuses anything but plain tensors and containers.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LensFileError, NumericalError
from ..io import atomic_write_text
from ..limits import HIDDEN_SIZE, NUM_LEVELS
from .base import LENS_FORMAT, Lens, LogitLens
from .jumps import JumpBank
from .tuned import TunedLens

CONFIG_NAME = "config.json"
PARAMS_NAME = "params.pt"
SIDECAR_NAME = "onejump.json"
LENS_TYPE = "linear_tuned_lens"
_CONFIG_KEYS = {"base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
                "unembed_hash", "lens_type"}


def bank_translators(bank: JumpBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Every jump of ``bank`` as a tuned-lens translator: ``weight`` (J, H, H) and ``bias`` (J, H).

    ``weight`` is in ``nn.Linear`` (out, in) form, so jump j's output is ``h + h @ weight[j].T + bias[j]``
    exactly (the BatchNorm folded with its running statistics, computed in float64).
    """
    with torch.no_grad():
        scale = bank.bn_weight.double() / torch.sqrt(bank.running_var.double() + bank.eps)  # (J, H)
        shift = bank.bn_bias.double() - bank.running_mean.double() * scale
        ab = torch.bmm(bank.A.double(), bank.B.double())  # (J, H, H)
        m = scale[:, :, None] * ab  # h @ m == (h * scale) @ A @ B
        c = torch.einsum("jh,jhk->jk", shift, ab)
        if not bank.residual:
            m = m - torch.eye(bank.hidden_size, dtype=m.dtype)
    return m.transpose(1, 2).float().contiguous(), c.float().contiguous()


def _probe(lens: Lens) -> tuple[torch.Tensor, torch.Tensor]:
    """The translators of any affine lens, read off its ``transform`` at 0 and at the unit vectors.

    Checked at a random point: a lens whose transform is not affine cannot be exported.
    """
    K, H = lens.num_blocks, lens.hidden_size
    device = next((p.device for p in lens.parameters()), torch.device("cpu"))
    probe = torch.cat([torch.zeros(1, H), torch.eye(H)]).to(device)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, H, generator=gen) * 3).to(device)
    weights, biases = [], []
    with torch.no_grad():
        for k in range(K):
            out = lens.transform(probe, k).float()
            bias = out[0]
            m = out[1:] - bias - torch.eye(H, device=device)  # row i: what e_i adds beyond itself
            expected = x + x @ m + bias
            got = lens.transform(x, k).float()
            if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(got.abs().max().clamp_min(1))):
                raise LensFileError(f"a '{lens.kind}' lens is not affine at level {k}; only affine lenses "
                                    "can be written as tuned-lens translators")
            weights.append(m.T.cpu())
            biases.append(bias.cpu())
    return torch.stack(weights).contiguous(), torch.stack(biases).contiguous()


def lens_translators(lens: Lens | JumpBank, jump_of_level: Sequence[int] | None = None,
                     num_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level translators (K, H, H), (K, H) of a lens.

    A :class:`TunedLens` gives its own, the logit lens zeros, a :class:`JumpBank` its folded jumps
    (``jump_of_level[k]``: the jump read at level k; default: jump k for a K-jump bank, the one
    jump at every level of a one-jump bank, which needs ``num_blocks``), a ``OneJump`` its jump at
    every level, a ``PerLevelLens`` jump k at level k; any other lens (e.g. JTC) is probed (it
    must be affine).
    """
    if isinstance(lens, JumpBank):
        weight, bias = bank_translators(lens)
        if jump_of_level is None:
            if lens.num_jumps == 1:
                if num_blocks is None:
                    raise LensFileError("a single jump is read at every level: give num_blocks")
                jump_of_level = [0] * num_blocks
            else:
                jump_of_level = list(range(lens.num_jumps))
        idx = list(jump_of_level)
        if any(not 0 <= j < lens.num_jumps for j in idx):
            raise LensFileError(f"jump_of_level names jumps outside 0..{lens.num_jumps - 1}")
        return weight[idx].contiguous(), bias[idx].contiguous()
    from .onejump import OneJump, PerLevelLens

    if isinstance(lens, OneJump):  # one jump at every level
        return lens_translators(lens.bank, [0] * lens.num_blocks)
    if isinstance(lens, PerLevelLens):  # jump k at level k
        return lens_translators(lens.bank, list(range(lens.num_blocks)))
    if isinstance(lens, TunedLens):
        return lens.weight.detach().float().cpu().clone(), lens.bias.detach().float().cpu().clone()
    if isinstance(lens, LogitLens):
        K, H = lens.num_blocks, lens.hidden_size
        return torch.zeros(K, H, H), torch.zeros(K, H)
    return _probe(lens)


def unembed_hash(lm: Any) -> str:
    """tuned-lens's fingerprint of the unembedding (a sha256 of its 1-decimal printout), for ``unembed_hash``."""
    import hashlib

    w = lm.adapter.unembedding_matrix().detach().cpu().float().numpy()
    return hashlib.sha256(np.array_str(w, precision=1).encode()).hexdigest()


def export_tuned_lens(lens: Lens | JumpBank, folder: str | Path, lm: Any, *,
                      jump_of_level: Sequence[int] | None = None, revision: str | None = None) -> Path:
    """Write ``lens`` (any affine lens, or a :class:`JumpBank`) as a tuned-lens folder for model ``lm``."""
    K, H = lm.num_blocks, lm.hidden_size
    weight, bias = lens_translators(lens, jump_of_level, num_blocks=K)
    if tuple(weight.shape) != (K, H, H) or tuple(bias.shape) != (K, H):
        raise LensFileError(f"the lens gives {weight.shape[0]} translators of width {weight.shape[-1]}; the model "
                            f"has K={K} exit levels of width H={H}")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise NumericalError("the lens's translators hold NaN or inf; not exported")
    state = {}
    for k in range(K):
        state[f"{k}.weight"] = weight[k].clone()
        state[f"{k}.bias"] = bias[k].clone()
    config = {"base_model_name_or_path": lm.name, "d_model": H, "num_hidden_layers": K, "bias": True,
              "base_model_revision": revision, "unembed_hash": unembed_hash(lm), "lens_type": LENS_TYPE}
    source = lens.kind if isinstance(lens, Lens) else ("residual jump" if lens.residual else "jump")
    sidecar = {"format": "onejump-tuned-lens-export", "model": lm.name, "fingerprint": lm.fingerprint,
               "source_kind": source, "jump_of_level": list(jump_of_level) if jump_of_level is not None else None}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{PARAMS_NAME}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, folder / PARAMS_NAME)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=1))
    atomic_write_text(folder / SIDECAR_NAME, json.dumps(sidecar, indent=1))
    return folder


def is_tuned_lens_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a tuned-lens folder (``params.pt`` + a config that is not onejump's)."""
    path = Path(path)
    if not (path.is_dir() and (path / PARAMS_NAME).is_file() and (path / CONFIG_NAME).is_file()):
        return False
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return True  # read_tuned_lens_folder says what is wrong with it
    return not (isinstance(config, dict) and config.get("format") == LENS_FORMAT)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LensFileError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(config, dict):
        raise LensFileError(f"{path} is not a tuned-lens config (a JSON object)")
    for key, allowed in (("d_model", HIDDEN_SIZE), ("num_hidden_layers", NUM_LEVELS)):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not allowed.contains(value):
            raise LensFileError(f"{path}: '{key}' must be {allowed.describe()}, got {value!r}")
    if config.get("lens_type", LENS_TYPE) != LENS_TYPE:
        raise LensFileError(f"{path}: lens_type {config.get('lens_type')!r} is not supported (only {LENS_TYPE})")
    if not isinstance(config.get("bias", True), bool):
        raise LensFileError(f"{path}: 'bias' must be true or false")
    return config


def _read_params(path: Path) -> dict[str, torch.Tensor]:
    """``params.pt`` through ``torch.load(weights_only=True)``: a flat dict of str -> tensor, or an error."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever torch's restricted unpickler refuses or cannot parse
        # torch's own message advises weights_only=False, which would run the file's code: never that
        raise LensFileError(f"{path} is not a plain dict of tensors onejump can read safely: it is truncated, in "
                            "another format, or holds Python objects (never unpickled: that could run code); "
                            "tuned-lens writes a dict of tensors with torch.save") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        what = "a dict with entries other than name -> tensor" if isinstance(state, dict) else type(state).__name__
        raise LensFileError(f"{path} does not hold a plain dict of named tensors (it holds {what})")
    return state


def read_tuned_lens_folder(folder: str | Path) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """``(config, weight (K, H, H), bias (K, H))`` of a tuned-lens folder, every key and shape checked."""
    folder = Path(folder)
    for name in (CONFIG_NAME, PARAMS_NAME):
        if not (folder / name).is_file():
            raise LensFileError(f"{folder} is not a tuned-lens folder: {name} missing")
    config = _read_config(folder / CONFIG_NAME)
    K, H, has_bias = config["num_hidden_layers"], config["d_model"], config.get("bias", True)
    state = _read_params(folder / PARAMS_NAME)  # what torch.load allocates is bounded by the file's size
    # K H x H translators take at least 2 bytes a number on disk (float16): a config claiming more
    # than params.pt can hold is refused before anything of that size is allocated
    size = (folder / PARAMS_NAME).stat().st_size
    if K * H * H * 2 > size:
        raise LensFileError(f"{folder / CONFIG_NAME} claims {K} translators of width {H} ({K * H * H:,} numbers), "
                            f"but {PARAMS_NAME} holds only {size:,} bytes: the config does not belong to it")
    expected = {f"{k}.weight" for k in range(K)} | ({f"{k}.bias" for k in range(K)} if has_bias else set())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}"] if extra else [])
        raise LensFileError(f"{folder / PARAMS_NAME} does not match its config ({K} translators of width {H}): "
                            + "; ".join(parts))
    weight = torch.zeros(K, H, H)
    bias = torch.zeros(K, H)
    for k in range(K):
        for name, shape, target in ((f"{k}.weight", (H, H), weight), (f"{k}.bias", (H,), bias)):
            if name not in state:
                continue
            t = state[name]
            if tuple(t.shape) != shape or not torch.is_floating_point(t):
                raise LensFileError(f"{folder / PARAMS_NAME}: '{name}' is {tuple(t.shape)} {t.dtype}, expected a "
                                    f"floating tensor of shape {shape}")
            target[k] = t.float()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise NumericalError(f"{folder / PARAMS_NAME} holds NaN or inf")
    return config, weight, bias


def import_tuned_lens(folder: str | Path, lm: Any) -> TunedLens:
    """A tuned-lens folder as a :class:`TunedLens` on ``lm``; refused when it was made for another model."""
    folder = Path(folder)
    config, weight, bias = read_tuned_lens_folder(folder)
    K, H = config["num_hidden_layers"], config["d_model"]
    if (K, H) != (lm.num_blocks, lm.hidden_size):
        raise LensFileError(f"the tuned lens in {folder} is for a model with {K} layers of width {H} "
                            f"('{config.get('base_model_name_or_path')}'); {lm.name} has {lm.num_blocks} of width "
                            f"{lm.hidden_size}")
    sidecar = folder / SIDECAR_NAME
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LensFileError(f"{sidecar} is not valid JSON") from None
        if isinstance(meta, dict) and meta.get("fingerprint") not in (None, lm.fingerprint):
            raise LensFileError(f"the lens in {folder} was made for another model (model '{meta.get('model')}', "
                                f"weights hash {meta.get('fingerprint')}); this model's hash is {lm.fingerprint}")
    elif config.get("unembed_hash") and config["unembed_hash"] != unembed_hash(lm):
        raise LensFileError(f"the tuned lens in {folder} was trained with another unembedding "
                            f"('{config.get('base_model_name_or_path')}'); it does not fit {lm.name}")
    return TunedLens(lm, weight, bias)


__all__ = ["bank_translators", "export_tuned_lens", "import_tuned_lens", "is_tuned_lens_folder", "lens_translators",
           "read_tuned_lens_folder", "unembed_hash"]
