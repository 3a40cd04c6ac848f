"""Per-lens caches of a run's evaluation and exit simulation.

Both stages read every lens of the run over the whole test split, and their cost is O(V) per lens
and level. A lens's numbers depend only on the store and that lens, so each lens's part is kept in
``<stage>/lenses/<name>/`` under a key of its own: adding or retraining one lens (the tuned lens,
the sweep's best jump) reads only that lens again. The stage's combined folder is still written
(and checked by the commands that only read it) as before.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..io import atomic_write_text


def _part_folder(folder: Path, name: str) -> Path:
    return folder / "lenses" / name


def _saved_key(folder: Path) -> str | None:
    path = folder / "key.txt"
    return path.read_text() if path.is_file() else None


def per_lens(folder: Path, keys: Mapping[str, str], compute: Callable[[list[str]], Mapping[str, Any]],
             load: Callable[[Path], Any], save: Callable[[Any, Path], Any]) -> tuple[dict[str, Any], list[str]]:
    """Each lens's part, in ``keys``' order: loaded from ``folder/lenses/<name>`` when its key matches
    ``keys[name]``, else computed (every missing one in one call, ``compute(names) -> {name: part}``)
    and saved. Returns the parts and the names computed."""
    parts: dict[str, Any] = {}
    todo: list[str] = []
    for name, key in keys.items():
        sub = _part_folder(folder, name)
        if _saved_key(sub) == key:
            try:
                parts[name] = load(sub)
                continue
            except StoreError:
                pass  # damaged: compute it again
        todo.append(name)
    if todo:
        fresh = compute(todo)
        for name in todo:
            store_part(folder, name, fresh[name], keys[name], save)
            parts[name] = fresh[name]
    return {name: parts[name] for name in keys}, todo


def exit_records(folder: Path, keys: Mapping[str, str]) -> dict[str, tuple]:
    """The top-1 tokens and confidences kept by each lens's evaluation part in ``folder`` (an evaluation
    folder) whose key still matches ``keys[name]``: an exit simulation takes them instead of a pass."""
    from ..evaluation.result import EvalResult

    out = {}
    for name, key in keys.items():
        sub = _part_folder(folder, name)
        if _saved_key(sub) != key:
            continue
        try:
            records = EvalResult.load(sub).exit_records(name)
        except StoreError:
            continue
        if records is not None:
            out[name] = records
    return out


def store_part(folder: Path, name: str, part: Any, key: str, save: Callable[[Any, Path], Any]) -> None:
    """Save one lens's part with its key (the key last, so a part cut short is never taken for done)."""
    sub = _part_folder(folder, name)
    if sub.exists():
        shutil.rmtree(sub)
    save(part, sub)
    atomic_write_text(sub / "key.txt", key)


def adopt(folder: Path, keys: Mapping[str, str], split: Callable[[str], Any],
          save: Callable[[Any, Path], Any]) -> None:
    """Give every lens of a valid combined result (one whose stage key still holds) its own cached part,
    so that a run folder written before per-lens caches keeps its work when one lens changes."""
    for name, key in keys.items():
        if _saved_key(_part_folder(folder, name)) != key:
            store_part(folder, name, split(name), key, save)


def cached_by_lens(folder: Path, key: str, keys: Mapping[str, str], *, key_without: Callable[[set[str]], str],
                   names_of: Callable[[Any], list[str]], compute: Callable[[list[str]], Mapping[str, Any]],
                   load: Callable[[Path], Any], save: Callable[[Any, Path], Any], split: Callable[[Any, str], Any],
                   combine: Callable[[list[Any]], Any]) -> tuple[Any, list[str]]:
    """A stage's combined result in ``folder`` (stage key ``key``), built from per-lens parts.

    ``keys``: each lens's own key. A combined result written before per-lens parts existed gives its
    lenses their parts when its key still holds for them: ``key_without(absent)`` is the stage key with
    the stage outputs of the lenses it lacks taken as absent (a tuned lens trained after it, say).
    Returns the result and the lenses computed now (none when the combined result was current).
    """
    saved = _saved_key(folder)
    whole = None
    if saved is not None and any(_saved_key(_part_folder(folder, n)) != k for n, k in keys.items()):
        try:
            whole = load(folder)
        except StoreError:
            whole = None
        if whole is not None:
            held = [n for n in names_of(whole) if n in keys]
            absent = {n for n in keys if n not in held}
            if saved == key_without(absent):
                adopt(folder, {n: keys[n] for n in held}, lambda n: split(whole, n), save)
    if saved == key:
        return (whole if whole is not None else load(folder)), []
    parts, computed = per_lens(folder, keys, compute, load, save)
    result = combine(list(parts.values()))
    (folder / "key.txt").unlink(missing_ok=True)
    save(result, folder)
    atomic_write_text(folder / "key.txt", key)
    return result, computed


__all__ = ["adopt", "cached_by_lens", "per_lens", "store_part"]
