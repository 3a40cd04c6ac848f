"""Sharing lenses through the Hugging Face hub.

:func:`resolve_pretrained` turns what a user passes to :meth:`Lens.from_pretrained` into a local
folder: an existing folder as it is, otherwise a hub repository id (``owner/name``) downloaded
with ``huggingface_hub.snapshot_download`` (cached as the hub caches models), or one folder of it
(``owner/name/subfolder``). :func:`push_to_hub`
saves a lens to a temporary folder and uploads it to a (created if missing) model repository,
in onejump's format or, with ``format="tuned-lens"``, in tuned-lens's (``config.json`` + ``params.pt``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import LensFileError
from .hub_ids import looks_like_hub_id, split_hub_source

FORMATS = ("onejump", "tuned-lens")


def resolve_pretrained(source: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                       subfolder: str | None = None) -> Path:
    """A local folder holding the lens ``source`` names: the folder itself, or a hub download.

    A hub source is ``owner/name`` with the lens at the repository's root, or ``owner/name/sub/folder``
    (or ``subfolder=``) for one of several lenses in one repository; only that folder is downloaded.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise LensFileError(f"{path} is a file; a lens is a folder (config.json + weights)")
        return path / subfolder if subfolder else path
    text = str(source)
    parsed = split_hub_source(text)
    if parsed is None:
        raise LensFileError(f"lens not found: {text} is neither a folder nor a hub id (owner/name)")
    repo_id, inner = parsed
    if inner and subfolder:
        raise LensFileError(f"'{text}' names a subfolder already; do not also pass subfolder='{subfolder}'")
    inner = inner or subfolder
    if inner is not None and split_hub_source(f"a/b/{inner}") is None:
        raise LensFileError(f"'{inner}' is not a folder name inside a hub repository")
    import huggingface_hub

    kwargs = {"allow_patterns": [f"{inner}/*"]} if inner else {}
    try:
        local = huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision,
                                                  cache_dir=str(cache_dir) if cache_dir else None, **kwargs)
    except Exception as exc:  # offline, unknown repository, no access: one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LensFileError(f"lens '{text}' is not a local folder and could not be fetched from the Hugging Face "
                            f"hub: {reason[:200]}") from None
    folder = Path(local) / inner if inner else Path(local)
    if not folder.is_dir():
        raise LensFileError(f"the hub repository {repo_id} has no folder '{inner}'")
    return folder


def push_to_hub(lens: Any, repo_id: str, *, format: str = "onejump", private: bool | None = None,
                token: str | None = None, revision: str | None = None, commit_message: str | None = None,
                subfolder: str | None = None, card: dict[str, Any] | None = None) -> Any:
    """Upload ``lens`` to the hub model repository ``repo_id`` (created if missing); returns the commit info.

    ``subfolder`` puts it in a folder of the repository (one repository can hold the lenses of one
    model), which ``Lens.from_pretrained("owner/name/subfolder", lm)`` reads. The upload holds the
    lens's ``README.md`` card (``card`` adds card information, see :mod:`onejump.lenses.card`).
    ``format="tuned-lens"`` uploads the tuned-lens folder form instead (any affine lens), which
    ``tuned_lens.TunedLens.from_model_and_pretrained`` reads after a download.
    """
    if format not in FORMATS:
        raise LensFileError(f"unknown lens format {format!r}; use one of {', '.join(FORMATS)}")
    if not looks_like_hub_id(repo_id):
        raise LensFileError(f"'{repo_id}' is not a hub repository id (owner/name)")
    if subfolder is not None and split_hub_source(f"a/b/{subfolder}") is None:
        raise LensFileError(f"'{subfolder}' is not a folder name inside a hub repository")
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="onejump-lens-") as tmp:
        if format == "tuned-lens":
            from .card import write_card
            from .tuned_format import export_tuned_lens

            export_tuned_lens(lens, tmp, lens.lm)
            write_card(lens, tmp, card)
        else:
            lens.save_pretrained(tmp, card=card)
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        extra = {"path_in_repo": subfolder} if subfolder else {}
        return api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {lens.kind} lens for {lens.lm.name}",
                                 **extra)


__all__ = ["FORMATS", "looks_like_hub_id", "push_to_hub", "resolve_pretrained", "split_hub_source"]
