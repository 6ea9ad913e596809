"""The one sha256 helper: files (weights, labels) and canonical JSON (parsed labels, options)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

_CHUNK = 1 << 20
_lock = threading.Lock()
_memo: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> hex digest


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hex). Remembered per process by path, size and modification time."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _memo:
            return _memo[key]
    digest = hashlib.sha256()
    with open(real, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _lock:
        _memo[key] = value
    return value


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, no spaces): equal content, equal hash."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
