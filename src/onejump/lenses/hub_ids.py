"""What a Hugging Face hub id looks like (``owner/name``, ``owner/name/sub/folder``): string checks only."""

from __future__ import annotations

import re

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` with hub-legal characters (a local path that does not exist may look the same)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def split_hub_source(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, subfolder)`` of ``owner/name`` or ``owner/name/sub/folder``; None if it is neither."""
    parts = text.split("/")
    if len(parts) < 2 or any(not _PART.match(p) or ".." in p for p in parts):
        return None
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


__all__ = ["looks_like_hub_id", "split_hub_source"]
