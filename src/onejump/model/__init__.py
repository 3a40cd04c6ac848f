"""The model: loading (aliases, hub ids, folders, GGUF files) and the architecture adapter (head, levels)."""

from .adapter import ArchitectureAdapter
from .loading import LoadedModel, from_pretrained_model, load_model

__all__ = ["ArchitectureAdapter", "LoadedModel", "from_pretrained_model", "load_model"]
