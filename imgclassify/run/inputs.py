"""Expand command-line inputs (files, directories, globs, ``-``) into an ordered stream of paths.

Order is deterministic: inputs in the order given, each directory or glob in natural sort
order ("img2" before "img10"). A path reached twice is kept once, at its first place.

The listing streams (:class:`InputListing`): a directory is walked a level at a time, each
folder's entries sorted on their own (never all paths together), so the first path comes
after one folder's listing whatever the tree's size, and classifying starts while the listing
goes on. What deduplication needs is kept compact (16 bytes of hash per path, and nothing at
all for a single folder or prefix, which lists each path once). A glob's matches are listed
and sorted together before its first path (its matched folders stream).

URLs follow the same rules (:mod:`imgclassify.system.storage`): an object-store prefix
(``s3://bucket/photos/``) is walked like a directory, a pattern (``s3://bucket/p/*.jpg``) is
globbed, a key is kept as named; an ``http(s)://`` URL is kept as given (it is read, and a 404
reported, when it is classified). Each keeps its URL as its path.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from imgclassify.system.storage import GLOB_CHARS, is_http, is_url, walk_levels

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
    """The result of :func:`expand_inputs`: the whole listing as a list."""

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


def _sorted_entries(folder: str) -> list[tuple[str, bool]]:
    """``folder``'s entries as ``(path, walk_into)``, in natural order of their names (the name
    itself breaks ties: ``a01``/``a1``). A symlink to a folder is neither walked nor a file (as
    ``os.walk`` without ``followlinks``); a broken link is a file (tried, and reported)."""
    found: list[tuple[str, str, bool]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir and entry.is_symlink():
                    continue
                found.append((entry.name, entry.path, is_dir))
    except OSError as err:
        log.warning("cannot list %s: %s", err.filename or folder, err.strerror or err)
        return []
    found.sort(key=lambda item: (natural_key(item[0]), item[0]))
    return [(path, is_dir) for _, path, is_dir in found]


def _walk(directory: str) -> Iterator[str]:
    """Every file below ``directory``, natural order by relative path, a folder at a time (only
    the folders on the way down are held); symlinked folders not followed."""
    return walk_levels(directory, _sorted_entries)


def read_path_list(stream: TextIO) -> Iterator[str]:
    """Paths from a stream, one per line; blank lines ignored, line endings stripped."""
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


class _Keys:
    """The paths seen so far, as 16-byte hashes (a path's key: its absolute, case-normalized form
    for local paths, the URL itself for URLs)."""

    def __init__(self) -> None:
        self._hashes: set[bytes] = set()

    def add(self, key: str) -> bool:
        """Record ``key``; False when it was recorded before."""
        digest = hashlib.blake2b(os.fsencode(key), digest_size=16).digest()
        if digest in self._hashes:
            return False
        self._hashes.add(digest)
        return True

    def __contains__(self, key: str) -> bool:
        return hashlib.blake2b(os.fsencode(key), digest_size=16).digest() in self._hashes


def _key_of(path: str) -> str:
    if is_url(path):
        return path  # object keys are case-sensitive, and no URL is relative
    return os.path.normcase(os.path.abspath(path))


class InputListing:
    """The inputs' paths as a stream, listed while they are used (see the module's notes).

    Iterate it once for the paths, in order; the counts (:attr:`listed`, :attr:`skipped_non_images`,
    :attr:`duplicates`, :attr:`missing`, :attr:`empty_globs`) grow as it goes and are final once
    :attr:`complete`. :meth:`found_any` looks ahead (the paths it read are still yielded).
    """

    def __init__(self, inputs: Iterable[str], stdin: TextIO | None = None, storage: Storage | None = None) -> None:
        self.inputs = list(inputs)
        self.stdin = stdin
        self.storage = storage
        self.skipped_non_images = 0
        self.empty_globs: list[str] = []
        #: named paths that do not exist; yielded in place so they get an error record there
        self.missing: list[str] = []
        self.duplicates = 0
        #: paths yielded (or looked ahead at) so far
        self.listed = 0
        self.complete = False
        self._seen, self._skipped = _Keys(), _Keys()
        # the walk of the only input (a folder, a prefix) lists each path once: nothing is remembered
        self._single = len(self.inputs) == 1 and self.inputs[0] != "-"
        self._ahead: deque[str] = deque()
        self._source = self._generate()

    def __iter__(self) -> Iterator[str]:
        while True:
            if self._ahead:
                yield self._ahead.popleft()
                continue
            path = next(self._source, None)
            if path is None:
                return
            yield path

    def _next(self) -> str | None:
        path = next(self._source, None)
        if path is not None:
            self._ahead.append(path)
        return path

    def found_any(self) -> bool:
        """True when at least one listed path exists (so there is something to classify): lists
        ahead until one does, or to the end."""
        while self.listed <= len(self.missing):
            if self._next() is None:
                return False
        return True

    def looked_ahead(self) -> list[str]:
        """The paths listed ahead (by :meth:`found_any`) and not yet yielded."""
        return list(self._ahead)

    # -- the listing -----------------------------------------------------------------------
    def _generate(self) -> Iterator[str]:
        for item in self.inputs:
            yield from self._expand_one(item)
        self.complete = True

    def _add(self, path: str, *, walked: bool = False) -> Iterator[str]:
        """``path`` once (``walked``: from the walk of the only input, which lists it once)."""
        if not (walked and self._single) and not self._seen.add(_key_of(path)):
            self.duplicates += 1
            return
        self.listed += 1
        yield path

    def _candidates(self, candidates: Iterable[str], *, walked: bool = False) -> Iterator[str]:
        for path in candidates:
            if is_image_name(path):
                yield from self._add(path, walked=walked)
            elif (walked and self._single) or self._skipped.add(_key_of(path)):  # each counted once
                self.skipped_non_images += 1

    def _missing(self, item: str) -> Iterator[str]:
        if _key_of(item) not in self._seen:
            self.missing.append(item)
        yield from self._add(item)  # reported as a per-file error ("no such file"), the run goes on

    def _expand_one(self, item: str) -> Iterator[str]:
        if item == "-":
            if self.stdin is None:
                raise ValueError("'-' given but no stdin stream")
            for line in read_path_list(self.stdin):
                yield from self._expand_one(line)
        elif is_url(item):
            yield from self._expand_url(item)
        elif os.path.isdir(item):
            yield from self._candidates(_walk(item), walked=True)
        elif os.path.lexists(item):
            yield from self._add(item)  # a file named explicitly, even a broken link: tried and reported
        elif _GLOB_CHARS.search(item):
            matches = sorted(glob.glob(item, recursive=True), key=natural_key)
            if not matches:
                self.empty_globs.append(item)
            for match in matches:
                if os.path.isdir(match):
                    yield from self._candidates(_walk(match))
                else:
                    yield from self._candidates([match])
        else:
            yield from self._missing(item)

    def _expand_url(self, item: str) -> Iterator[str]:
        if is_http(item):
            yield from self._add(item)  # read when classified: a 404 is this input's error record
            return
        if self.storage is None:
            from imgclassify.system.storage import Storage

            self.storage = Storage()
        storage = self.storage
        if GLOB_CHARS.search(item):
            matches = sorted(storage.glob(item), key=lambda match: natural_key(match[0]))
            if not matches:
                self.empty_globs.append(item)
            for match, is_prefix in matches:
                yield from self._candidates(storage.iter_walk(match, natural_key) if is_prefix else [match])
        elif storage.isfile(item):
            yield from self._add(item)
        elif storage.isdir(item):
            yield from self._candidates(storage.iter_walk(item, natural_key), walked=True)
        else:
            yield from self._missing(item)  # a per-object error ("object not found"), the run goes on


def expand_inputs(inputs: Iterable[str], stdin: TextIO | None = None, storage: Storage | None = None) -> ExpandedInputs:
    """Turn user inputs into image paths, the whole listing at once (:class:`InputListing` streams it).

    Each input is an existing file (always kept), a directory (walked recursively, only files
    with an image ending kept), a glob pattern (``**`` spans directories), or ``-`` for a list
    of paths on ``stdin``, which are expanded by the same rules; or a URL, by the same rules
    again (``storage`` lists object stores: its options; None: each filesystem's own configuration).
    """
    listing = InputListing(inputs, stdin=stdin, storage=storage)
    paths = list(listing)
    return ExpandedInputs(paths, listing.skipped_non_images, listing.empty_globs, listing.missing, listing.duplicates)
