"""Sharing lenses through the Hugging Face hub.

:func:`resolve_pretrained` turns what a user passes to :meth:`Lens.from_pretrained` into a local
folder: an existing folder as it is, otherwise a hub repository id (``owner/name``) downloaded
with ``huggingface_hub.snapshot_download`` (cached as the hub caches models). :func:`push_to_hub`
saves a lens to a temporary folder and uploads it to a (created if missing) model repository,
in onejump's format or, with ``format="tuned-lens"``, in tuned-lens's (``config.json`` + ``params.pt``).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ShortcutError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
FORMATS = ("onejump", "tuned-lens")


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` with hub-legal characters (a local path that does not exist may look the same)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def resolve_pretrained(source: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder holding the lens ``source`` names: the folder itself, or a hub download."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ShortcutError(f"{path} is a file; a lens is a folder (config.json + weights)")
        return path
    text = str(source)
    if not looks_like_hub_id(text):
        raise ShortcutError(f"lens not found: {text} is neither a folder nor a hub id (owner/name)")
    import huggingface_hub

    try:
        local = huggingface_hub.snapshot_download(repo_id=text, revision=revision,
                                                  cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # offline, unknown repository, no access: one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShortcutError(f"lens '{text}' is not a local folder and could not be fetched from the Hugging Face "
                            f"hub: {reason[:200]}") from None
    return Path(local)


def push_to_hub(lens: Any, repo_id: str, *, format: str = "onejump", private: bool | None = None,
                token: str | None = None, revision: str | None = None,
                commit_message: str | None = None) -> Any:
    """Upload ``lens`` to the hub model repository ``repo_id`` (created if missing); returns the commit info.

    ``format="tuned-lens"`` uploads the tuned-lens folder form instead (any affine lens), which
    ``tuned_lens.TunedLens.from_model_and_pretrained`` reads after a download.
    """
    if format not in FORMATS:
        raise ShortcutError(f"unknown lens format {format!r}; use one of {', '.join(FORMATS)}")
    if not looks_like_hub_id(repo_id):
        raise ShortcutError(f"'{repo_id}' is not a hub repository id (owner/name)")
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="onejump-lens-") as tmp:
        if format == "tuned-lens":
            from .tuned_format import export_tuned_lens

            export_tuned_lens(lens, tmp, lens.lm)
        else:
            lens.save_pretrained(tmp)
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {lens.kind} lens for {lens.lm.name}")


__all__ = ["FORMATS", "looks_like_hub_id", "push_to_hub", "resolve_pretrained"]
