"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The data goes to a temporary file in the same folder (``.<name>.<8 random characters>.tmp``), is
flushed to disk, then renamed over the target with :func:`os.replace` (atomic on POSIX and Windows within
one file system).  A failed write (a full disk, say) removes its temporary file and raises an OSError
naming the target; a process killed mid-write leaves one, which :func:`remove_orphaned_temps` clears.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Union

__all__ = ["atomic_write_bytes", "atomic_write_text", "remove_orphaned_temps"]

PathLike = Union[str, "os.PathLike[str]"]

_DEFAULT_MODE = 0o644
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what tempfile.mkstemp makes with our prefix and suffix


def atomic_write_bytes(path: PathLike, data: bytes | Iterable[bytes]) -> Path:
    """Write ``data`` (bytes, or an iterable of byte blocks streamed in order) to ``path`` atomically.

    Temp file + fsync + rename; returns the path.

    Missing parent folders are created. A new file gets mode 0o644; an existing file keeps its mode.
    """
    target = Path(path)
    try:
        _write_replace(target, data)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc  # name the target, not the temp file
    _fsync_dir(target.parent)
    return target


def _write_replace(target: Path, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` to a temporary file beside ``target``, fsync it and rename it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _DEFAULT_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, (bytes, bytearray, memoryview)):
                handle.write(data)
            else:
                for block in data:
                    handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def remove_orphaned_temps(folder: PathLike) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``folder``; returns them.

    Only call it while no other process writes into ``folder`` (e.g. under a run folder's lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if _TEMP_NAME.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync_dir(folder: Path) -> None:
    """Flush a folder entry so the rename survives a crash (best effort; a no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
