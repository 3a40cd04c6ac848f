"""Small file helpers shared by the package: the cache root, sha256, atomic writes, the folder lock."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import StoreError

DEFAULT_CACHE: Path = Path(os.environ.get("ONEJUMP_CACHE") or Path.home() / ".cache" / "onejump")


def _write_atomic(path: Path, write: Callable[[io.TextIOBase], None]) -> None:
    """Write a text file under a temporary name in the same folder, then os.replace it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_permissions(path: str | Path) -> None:
    """The mode a plainly created file gets (0666 less the umask): mkstemp's temporaries are 0600."""
    os.chmod(path, 0o666 & ~_umask())


#: The file that :class:`folder_lock` holds in the folder it locks.
LOCK_NAME = ".onejump.lock"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        ordinary_permissions(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _cleanup(tmp)
        raise _disk_error(path, exc) from None
    except BaseException:
        _cleanup(tmp)
        raise


def remove_temporaries(folder: Path) -> None:
    """Remove what a killed process left of its atomic writes in ``folder`` (``.<name>.<random>`` files).

    Only while no other process writes in the folder: its temporaries would go too.
    """
    for path in Path(folder).glob(".*.*"):
        if path.is_file() and path.name != LOCK_NAME:
            path.unlink(missing_ok=True)


def _cleanup(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _disk_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {path}: free space and rerun the same command "
                          "(finished work is kept, nothing half-written is)")
    return StoreError(f"could not write {path}: {exc.strerror or exc}")


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or one that safetensors reports only in its message
    ("I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError):
        return exc
    match = re.search(r"\(os error (\d+)\)", str(exc))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code))


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file under a temporary name in its folder, fsync it and rename it.

    A full disk or an unwritable folder becomes one :class:`StoreError` line, and no partial file
    is left under either name.
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise _disk_error(path, exc) from None
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        ordinary_permissions(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _cleanup(tmp)
        err = os_error_of(exc)
        if err is not None and not isinstance(exc, KeyboardInterrupt):
            raise _disk_error(path, err) from None
        raise


class folder_lock:  # noqa: N801 - used as a context manager, reads like a function
    """Hold an exclusive lock on an output folder; a second writer is refused at once.

    Uses an OS file lock (``filelock``), so a killed process never leaves a stale lock.
    """

    def __init__(self, folder: str | Path):
        from filelock import FileLock

        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(f"{self.folder} is a file, not a folder: give a folder (new or existing)")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder {self.folder}: {exc.strerror or exc}") from None
        self._lock = FileLock(str(self.folder / LOCK_NAME), timeout=0)

    def __enter__(self) -> folder_lock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise StoreError(f"another onejump process is writing to {self.folder}; wait for it or use "
                             "another folder") from None
        except OSError as exc:
            raise StoreError(f"cannot write to {self.folder}: {exc.strerror or exc}; use a writable folder") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
