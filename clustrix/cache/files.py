"""Cached call values on disk: one file per key in ``cache_dir``.

A file is a header line of JSON (the function's name, the value's size) followed by the
value pickled with cloudpickle, so listing the cache reads headers only, never the values.
Files are written to a temporary name and renamed into place: a reader sees a whole entry
or none, even while another process writes the same key. The folder is mode 700 and the
files 600, as values can be anything a function returns (data, tokens).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

#: The first bytes of every entry; a later format changes the number.
MAGIC = b"clustrix-cache 1\n"
SUFFIX = ".pkl"
_TEMPORARY = ".tmp-"


@dataclass(frozen=True)
class Entry:
    """One cached value: its key, the function that made it, its size in bytes and when it
    was stored (seconds since the epoch)."""

    key: str
    function: str
    size: int
    stored: float
    path: Path


class CacheDir:
    """The cache folder of the ``cache_dir`` setting (``~`` expanded; made when first written)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()

    def _file(self, key: str) -> Path:
        return self.path / f"{key}{SUFFIX}"

    def _ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode passes through the umask, and the folder may predate this version.
        os.chmod(self.path, 0o700)

    def load(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` for a stored key; ``(False, None)`` when there is none, or the
        entry cannot be read (damaged, or naming a module this process cannot import): a
        miss, so the call runs and stores it again."""
        try:
            with open(self._file(key), "rb") as stream:
                if stream.readline() != MAGIC:
                    return False, None
                stream.readline()  # the header
                return True, cloudpickle.load(stream)
        except FileNotFoundError:
            return False, None
        except Exception:  # any unpickling failure is a miss, not an error
            return False, None

    def save(self, key: str, function: str, value: Any) -> bool:
        """Store ``value`` under ``key``; False (nothing stored) when cloudpickle cannot
        pickle it (a generator, an open file...) or the folder cannot be written."""
        try:
            data = cloudpickle.dumps(value)
        except Exception:  # an unpicklable value is simply not cached
            return False
        header = json.dumps({"function": function, "size": len(data)}).encode() + b"\n"
        try:
            self._ensure()
            descriptor, temporary = tempfile.mkstemp(prefix=_TEMPORARY, dir=self.path)
        except OSError:
            return False
        try:
            # mkstemp makes the file 0600 already; say so rather than rely on it.
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(MAGIC + header + data)
            os.replace(temporary, self._file(key))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return False
        return True

    def entries(self) -> list[Entry]:
        """Every stored entry, oldest first; unreadable files are skipped."""
        found = [entry for entry in map(_read_entry, self._files()) if entry is not None]
        return sorted(found, key=lambda entry: entry.stored)

    def clear(self, older_than: float | None = None) -> list[Entry]:
        """Remove the entries stored more than ``older_than`` seconds ago (all when None),
        and temporary files of writes that died as old; the removed entries."""
        limit = time.time() - (older_than or 0.0)
        removed = []
        for entry in self.entries():
            if older_than is None or entry.stored < limit:
                with contextlib.suppress(FileNotFoundError):
                    entry.path.unlink()
                    removed.append(entry)
        for leftover in self.path.glob(f"{_TEMPORARY}*") if self.path.is_dir() else ():
            with contextlib.suppress(OSError):
                if older_than is None or leftover.stat().st_mtime < limit:
                    leftover.unlink()
        return removed

    def _files(self) -> Iterator[Path]:
        if self.path.is_dir():
            yield from self.path.glob(f"*{SUFFIX}")


def _read_entry(path: Path) -> Entry | None:
    try:
        with open(path, "rb") as stream:
            if stream.readline() != MAGIC:
                return None
            header = json.loads(stream.readline())
            status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    function = header.get("function", "?") if isinstance(header, dict) else "?"
    return Entry(path.name[: -len(SUFFIX)], str(function), status.st_size, status.st_mtime, path)
