"""``--sort-into DIR``: put each classified image into ``DIR/<class_id>-<class_name>/``.

Records below ``--threshold`` go to ``DIR/unknown/``; failed files are left where they are.
``--sort-mode`` is ``copy`` (the default: the sources are never touched), ``hardlink``,
``symlink`` or ``move``. Guarantees:

* nothing is overwritten: a name already taken gets ``-2``, ``-3``, ... before its suffix, in
  input order (the final name is claimed with ``link``/``symlink``, which fail on an existing
  name, never with a plain rename);
* a file is never half copied or half moved: a copy is written to a temporary name in the
  destination folder, fsynced, then linked to its final name; a move is a rename-without-replace
  (``link`` then ``unlink`` of the source) on one file system, else a copy as above and then the
  source's ``unlink``;
* a file that cannot be sorted is listed (a warning and the manifest's counts) and left alone;
* a journal, ``DIR/.imgclassify-sort.jsonl``, says what was sorted where: an image already sorted
  (journal entry and destination present) is not sorted again, so ``--resume`` and repeated runs
  are safe. Sorting happens before a batch's records are written, so a run killed in between
  re-classifies those images on ``--resume`` and the journal skips them.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from imgclassify.errors import UsageError
from imgclassify.results.formats.base import truncate
from imgclassify.results.formats.json_lines import JsonLineError, read_appended
from imgclassify.results.records import Prediction
from imgclassify.system.fs import created_exclusively, fsync_directory

JOURNAL_NAME = ".imgclassify-sort.jsonl"
UNKNOWN_FOLDER = "unknown"
#: longest folder or file name part we make, in UTF-8 bytes (most file systems allow 255)
MAX_NAME_BYTES = 120
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


class SortMode(str, enum.Enum):
    COPY = "copy"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    MOVE = "move"


@dataclass(frozen=True)
class SortOptions:
    into: Path
    mode: SortMode = SortMode.COPY
    #: print the plan (one ``mode<TAB>source<TAB>destination`` line per image) and change nothing
    dry_run: bool = False


def _clip(text: str, limit: int) -> str:
    encoded = text.encode("utf-8", errors="surrogateescape")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def safe_name(text: str, *, limit: int = MAX_NAME_BYTES) -> str:
    """``text`` as one safe file-name part on Linux, macOS and Windows.

    No path separators, control characters or Windows-reserved characters (each becomes ``_``),
    no leading or trailing dots and spaces (so never ``.`` or ``..``), NFC-normalized, at most
    ``limit`` UTF-8 bytes; never empty.
    """
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", text))
    cleaned = cleaned.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    cleaned = _clip(cleaned, limit).strip(" .")
    return cleaned or "_"


def class_folder(prediction: Prediction) -> str | None:
    """The folder under DIR for one record: ``<class_id>-<name>``, ``unknown``, or None (failed).

    The class id leads because ImageNet names are not unique (``crane`` is 134 and 517): folders
    keyed by id never merge two classes, and sort in class order.
    """
    if prediction.error is not None or not prediction.top:
        return None
    if prediction.confident is False:
        return UNKNOWN_FOLDER
    best = prediction.top[0]
    return f"{best.class_id}-{safe_name(best.class_name)}"


def _numbered(name: str, n: int) -> str:
    if n == 1:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{n}"
    return f"{stem}-{n}.{suffix}"


@dataclass
class SortCounts:
    sorted: int = 0
    already_sorted: int = 0
    failed: int = 0
    not_classified: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {
            "sorted": self.sorted,
            "already_sorted": self.already_sorted,
            "failed": self.failed,
            "not_classified": self.not_classified,
        }


class _NameTaken(Exception):
    pass


def _copy_exclusive(source: str, final: Path) -> None:
    """Copy ``source`` to ``final`` (which must not exist) through a fsynced temporary file beside it."""
    try:
        with created_exclusively(final, fsync=True) as tmp:  # linked to ``final``: never overwrites
            with open(source, "rb") as src, open(tmp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
            shutil.copystat(source, tmp)
    except FileExistsError:
        raise _NameTaken from None


class Sorter:
    """Sorts records' files into ``options.into`` as they stream; one per run."""

    def __init__(self, options: SortOptions, *, plan_stream: TextIO | None = None) -> None:
        self.options = options
        self.root = options.into
        self.plan_stream = plan_stream
        self.counts = SortCounts()
        self.journal_path = self.root / JOURNAL_NAME
        self.done, self._journal_whole = self._read_journal()
        self.claimed: set[Path] = set()  # names planned in a dry run
        self.journal: TextIO | None = None

    def _read_journal(self) -> tuple[dict[str, str], int | None]:
        """What earlier runs sorted (source -> destination under DIR), and the bytes the journal's whole lines fill.

        The journal is JSON Lines, read with the results' rule
        (:class:`~imgclassify.results.formats.json_lines.JsonLines`): a last line cut short by a
        killed run is skipped (and truncated away before this run appends), a damaged line before
        it is an error.
        """
        done: dict[str, str] = {}
        try:
            entries, whole = read_appended(self.journal_path)
        except FileNotFoundError:
            return done, None
        except JsonLineError as exc:
            raise UsageError(
                f"--sort-into: the journal {self.journal_path}: {exc}, and only a last line cut short by a killed "
                "run is skipped; fix or delete that line (the journal says what earlier runs sorted where)"
            ) from None
        for number, entry in entries:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("source"), str)
                and isinstance(entry.get("destination"), str)
            ):
                raise UsageError(
                    f"--sort-into: the journal {self.journal_path}: line {number} is not a journal entry (a JSON "
                    "object with 'source' and 'destination' strings); fix or delete that line"
                )
            done[entry["source"]] = entry["destination"]
        return done, whole

    def _record(self, source: str, destination: Path) -> None:
        if self.journal is None:
            self.root.mkdir(parents=True, exist_ok=True)
            if self._journal_whole is not None:  # a last line cut short: the next entry must not continue it
                truncate(self.journal_path, self._journal_whole)
            self.journal = open(self.journal_path, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        entry = {"source": source, "destination": str(destination.relative_to(self.root)), "mode": self.options.mode}
        self.journal.write(json.dumps(entry) + "\n")
        self.journal.flush()
        self.done[source] = entry["destination"]

    def sort(self, batch: Sequence[Prediction]) -> None:
        for record in batch:
            self.sort_one(record)

    def sort_one(self, record: Prediction) -> Path | None:
        folder_name = class_folder(record)
        if folder_name is None:
            self.counts.not_classified += 1
            return None
        source = os.path.abspath(record.path)
        previous = self.done.get(source)
        if previous is not None and os.path.lexists(self.root / previous):
            self.counts.already_sorted += 1
            return self.root / previous
        folder = self.root / folder_name
        base = safe_name(os.path.basename(record.path))
        try:
            destination = self._place(source, folder, base)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EXDEV:
                reason = "hard links cannot cross file systems; use --sort-mode copy or symlink"
            self.counts.failed += 1
            self.counts.failures.append((record.path, reason))
            return None
        self.counts.sorted += 1
        return destination

    def _place(self, source: str, folder: Path, base: str) -> Path:
        mode, dry = self.options.mode, self.options.dry_run
        if not dry:
            folder.mkdir(parents=True, exist_ok=True)
        elif not os.path.lexists(source):
            raise FileNotFoundError(errno.ENOENT, "file not found", source)
        for n in range(1, 100_000):
            final = folder / _numbered(base, n)
            if dry:
                if final in self.claimed or os.path.lexists(final):
                    continue
                self.claimed.add(final)
                if self.plan_stream is not None:
                    self.plan_stream.write(f"{mode.value}\t{source}\t{final}\n")
                return final
            try:
                self._claim(source, final)
            except (_NameTaken, FileExistsError):
                continue
            fsync_directory(folder)
            self._record(source, final)
            return final
        raise OSError(errno.EEXIST, "no free name left for this file")

    def _claim(self, source: str, final: Path) -> None:
        mode = self.options.mode
        if mode is SortMode.COPY:
            _copy_exclusive(source, final)
        elif mode is SortMode.HARDLINK:
            os.link(source, final, follow_symlinks=False)
        elif mode is SortMode.SYMLINK:
            if not os.path.exists(source):
                raise FileNotFoundError(errno.ENOENT, "file not found", source)
            os.symlink(source, final)
        else:
            try:
                os.link(source, final, follow_symlinks=False)  # a rename that never replaces
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                _copy_exclusive(source, final)  # another file system: whole copy first
            os.unlink(source)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def describe(self) -> dict[str, Any]:
        """The manifest's ``sort`` section."""
        return {
            "into": str(self.root),
            "mode": self.options.mode.value,
            "dry_run": self.options.dry_run,
            "journal": str(self.journal_path),
            "counts": self.counts.to_dict(),
            "failures": [{"path": p, "reason": r} for p, r in self.counts.failures],
        }


def validate_sort(options: SortOptions) -> None:
    """``--sort-into DIR``: DIR is a folder (or can be made in an existing one) we may write to."""
    root = options.into
    if root.exists() and not root.is_dir():
        raise UsageError(f"--sort-into {root} is a file: give a folder (it is created when missing)")
    parent = root if root.exists() else root.parent
    if not root.exists() and not (parent if str(parent) else Path(".")).is_dir():
        raise UsageError(f"--sort-into {root}: the folder {parent} does not exist; create it first")
    if not os.access(parent if str(parent) else ".", os.W_OK):
        raise UsageError(f"--sort-into {root}: permission denied; choose a writable folder")
