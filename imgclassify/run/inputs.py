"""Expand command-line inputs (files, directories, globs, ``-``) into an ordered list of paths.

Order is deterministic: inputs in the order given, each directory or glob in natural sort
order ("img2" before "img10"). A path reached twice is kept once, at its first place.

URLs follow the same rules (:mod:`imgclassify.system.storage`): an object-store prefix
(``s3://bucket/photos/``) is walked like a directory, a pattern (``s3://bucket/p/*.jpg``) is
globbed, a key is kept as named; an ``http(s)://`` URL is kept as given (it is read, and a 404
reported, when it is classified). Each keeps its URL as its path.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from imgclassify.system.storage import GLOB_CHARS, is_http, is_url

if TYPE_CHECKING:
    from imgclassify.system.storage import Storage

log = logging.getLogger("imgclassify")

#: File name endings treated as images when walking a directory or matching a glob.
#: A file named explicitly is always tried, whatever its ending.
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp",
        ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k",
        ".heic", ".heif", ".avif",
    }
)  # fmt: skip

_GLOB_CHARS = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value: ``a2 < a10``; case-insensitive."""
    parts = _DIGITS.split(text)
    return tuple((0, int(p)) if p.isdigit() else (1, p.casefold()) for p in parts if p)


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


@dataclass
class ExpandedInputs:
    """The result of :func:`expand_inputs`."""

    paths: list[str] = field(default_factory=list)
    #: files passed over in directories/globs because their ending is not an image's
    skipped_non_images: int = 0
    #: glob patterns that matched nothing
    empty_globs: list[str] = field(default_factory=list)
    #: named paths that do not exist; kept in ``paths`` so they get an error record in place
    missing: list[str] = field(default_factory=list)
    duplicates: int = 0

    @property
    def found_any(self) -> bool:
        """True when at least one path exists (so there is something to classify)."""
        return len(self.paths) > len(self.missing)


def _walk(directory: str) -> Iterator[str]:
    """Every file below ``directory``, natural order by relative path; symlinked dirs not followed."""

    def on_error(err: OSError) -> None:
        log.warning("cannot list %s: %s", err.filename, err.strerror or err)

    found: list[str] = []
    for root, dirs, files in os.walk(directory, onerror=on_error):
        dirs.sort(key=natural_key)
        found.extend(os.path.join(root, name) for name in files)
    found.sort(key=lambda p: tuple(natural_key(part) for part in os.path.relpath(p, directory).split(os.sep)))
    return iter(found)


def _relative_order(paths: Iterable[str], base: str) -> list[str]:
    """``paths`` below ``base`` (URLs, ``/``-separated) in natural order of their parts below it."""
    prefix = base.rstrip("/") + "/"

    def key(path: str) -> tuple[tuple[tuple[int, int | str], ...], ...]:
        relative = path[len(prefix) :] if path.startswith(prefix) else path
        return tuple(natural_key(part) for part in relative.split("/"))

    return sorted(paths, key=key)


def read_path_list(stream: TextIO) -> Iterator[str]:
    """Paths from a stream, one per line; blank lines ignored, line endings stripped."""
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def expand_inputs(inputs: Iterable[str], stdin: TextIO | None = None, storage: Storage | None = None) -> ExpandedInputs:
    """Turn user inputs into image paths.

    Each input is an existing file (always kept), a directory (walked recursively, only files
    with an image ending kept), a glob pattern (``**`` spans directories), or ``-`` for a list
    of paths on ``stdin``, which are expanded by the same rules; or a URL, by the same rules
    again (``storage`` lists object stores: its options; None: each filesystem's own configuration).
    """
    result = ExpandedInputs()
    seen: set[str] = set()
    skipped: set[str] = set()

    def key_of(path: str) -> str:
        if is_url(path):
            return path  # object keys are case-sensitive, and no URL is relative
        return os.path.normcase(os.path.abspath(path))

    def expand_url(item: str) -> None:
        nonlocal storage
        if is_http(item):
            add(item)  # read when classified: a 404 is this input's error record
            return
        if storage is None:
            from imgclassify.system.storage import Storage

            storage = Storage()
        if GLOB_CHARS.search(item):
            matches = sorted(storage.glob(item), key=lambda match: natural_key(match[0]))
            if not matches:
                result.empty_globs.append(item)
            for match, is_prefix in matches:
                add_candidates(_relative_order(storage.walk(match), match) if is_prefix else [match])
        elif storage.isfile(item):
            add(item)
        elif storage.isdir(item):
            add_candidates(_relative_order(storage.walk(item), item))
        else:
            if key_of(item) not in seen:
                result.missing.append(item)
            add(item)  # reported as a per-object error ("object not found"), the run goes on

    def add(path: str) -> None:
        key = key_of(path)
        if key in seen:
            result.duplicates += 1
            return
        seen.add(key)
        result.paths.append(path)

    def add_candidates(candidates: Iterable[str]) -> None:
        for path in candidates:
            if is_image_name(path):
                add(path)
            elif key_of(path) not in skipped:
                skipped.add(key_of(path))
                result.skipped_non_images += 1

    def expand_one(item: str) -> None:
        if item == "-":
            if stdin is None:
                raise ValueError("'-' given but no stdin stream")
            for line in read_path_list(stdin):
                expand_one(line)
        elif is_url(item):
            expand_url(item)
        elif os.path.isdir(item):
            add_candidates(_walk(item))
        elif os.path.lexists(item):
            add(item)  # a file named explicitly, even a broken link: tried and reported
        elif _GLOB_CHARS.search(item):
            matches = sorted(glob.glob(item, recursive=True), key=natural_key)
            if not matches:
                result.empty_globs.append(item)
            for match in matches:
                if os.path.isdir(match):
                    add_candidates(_walk(match))
                else:
                    add_candidates([match])
        else:
            if key_of(item) not in seen:
                result.missing.append(item)
            add(item)  # reported as a per-file error ("no such file"), the run goes on

    for item in inputs:
        expand_one(item)
    return result
