"""Files written whole or not at all: the one atomic-write helper."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, *, temp_suffix: str | None = None, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; when the block ends normally it replaces ``path``
    in one rename (readers see the old file or the new one, never part of one), and when it
    raises the temporary file is removed. ``temp_suffix``: name it ``path`` + that suffix
    (``.part``) instead of a hidden per-process name; ``fsync``: flush it to the disk first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if temp_suffix is not None:
        tmp = path.with_name(path.name + temp_suffix)
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
