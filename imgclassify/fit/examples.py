"""The examples of a fit: ``EXAMPLES_DIR/<category>/...`` images, each with its sha256.

Categories are the folders directly under ``EXAMPLES_DIR`` (sorted by name; hidden ones, starting
with ``.``, are passed over), their images every file below them with an image's ending. The
examples are ordered by category, then sha256: the same files give the same order whatever
their names, so the same head. A file found twice in one category (same sha256) counts once; one
found in two categories is a warning (it teaches both).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgclassify.errors import UsageError
from imgclassify.system.digests import sha256_file

log = logging.getLogger("imgclassify")

#: fewer examples than this in a category earn a warning
FEW_EXAMPLES = 3


@dataclass(frozen=True)
class Example:
    category: int
    #: the path as found (EXAMPLES_DIR joined with the file's place below it)
    path: str
    #: the path below EXAMPLES_DIR, with ``/`` (what the fit's manifest records)
    relative: str
    sha256: str


@dataclass
class Examples:
    categories: list[str]
    items: list[Example]
    #: files below a category that are not images by their ending
    skipped_non_images: int = 0
    #: files directly in EXAMPLES_DIR (in no category)
    outside: list[str] = field(default_factory=list)
    duplicates: int = 0

    def counts(self) -> list[int]:
        found = [0] * len(self.categories)
        for item in self.items:
            found[item.category] += 1
        return found

    def labels(self) -> list[int]:
        return [item.category for item in self.items]


def find_examples(root: Path) -> Examples:
    """The categories and examples below ``root`` (see the module's docstring)."""
    from imgclassify.run.inputs import is_image_name, natural_key

    if not root.is_dir():
        raise UsageError(f"{root} is not a folder: give EXAMPLES_DIR, with one folder of example images per category")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    outside = [e.path for e in entries if e.is_file() and not e.name.startswith(".")]
    categories = [e.name for e in folders]
    found = Examples(categories=categories, items=[], outside=outside)
    for index, folder in enumerate(folders):
        files: list[str] = []
        for base, dirs, names in os.walk(folder.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [os.path.join(base, n) for n in names if not n.startswith(".")]
        files.sort(key=lambda p: natural_key(os.path.relpath(p, root)))
        seen: set[str] = set()
        for path in files:
            if not is_image_name(path):
                found.skipped_non_images += 1
                continue
            digest = sha256_file(path)
            if digest in seen:
                found.duplicates += 1
                continue
            seen.add(digest)
            relative = Path(os.path.relpath(path, root)).as_posix()
            found.items.append(Example(index, path, relative, digest))
    found.items.sort(key=lambda e: (e.category, e.sha256))
    return found


def check_examples(found: Examples, root: Path) -> list[str]:
    """Warnings about the examples (few in a category, files in two); a UsageError when there is nothing to fit."""
    warnings = []
    if found.outside:
        warnings.append(
            f"{len(found.outside)} file(s) directly in {root} are in no category and are not used "
            f"(put them in {root}/<category>/)"
        )
    counts = found.counts()
    with_examples = [name for name, n in zip(found.categories, counts, strict=True) if n > 0]
    if len(with_examples) < 2:
        raise UsageError(
            f"{root}: found {len(with_examples)} category folder(s) with images; fitting needs at least two: "
            f"{root}/<category>/<images>"
        )
    for name, n in zip(found.categories, counts, strict=True):
        if n == 0:
            warnings.append(f"category {name!r} has no images: it is left out")
        elif n < FEW_EXAMPLES:
            warnings.append(
                f"category {name!r} has {n} example{'s' if n != 1 else ''}: give at least {FEW_EXAMPLES} "
                "(5 to 10 for a reliable head); its cross-validated accuracy says little"
            )
    by_sha: dict[str, set[int]] = {}
    for item in found.items:
        by_sha.setdefault(item.sha256, set()).add(item.category)
    shared = [sha for sha, cats in by_sha.items() if len(cats) > 1]
    if shared:
        warnings.append(f"{len(shared)} image(s) are examples of more than one category")
    return warnings


def without_empty(found: Examples) -> Examples:
    """``found`` without the categories that have no example (indices renumbered)."""
    counts = found.counts()
    keep = [i for i, n in enumerate(counts) if n > 0]
    if len(keep) == len(found.categories):
        return found
    new = {old: i for i, old in enumerate(keep)}
    items = [Example(new[e.category], e.path, e.relative, e.sha256) for e in found.items]
    return Examples(
        [found.categories[i] for i in keep], items, found.skipped_non_images, found.outside, found.duplicates
    )


def describe(items: Sequence[Example], categories: Sequence[str]) -> list[dict[str, str]]:
    """The fit manifest's ``examples``: category, path below EXAMPLES_DIR, sha256."""
    return [{"category": categories[e.category], "path": e.relative, "sha256": e.sha256} for e in items]
