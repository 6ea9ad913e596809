"""What every results format has: :class:`RecordFormat`, the writer protocol, the reader's errors.

Also the text helpers the formats share (JSON that keeps non-UTF-8 file names exact, CSV-safe text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TextIO

from imgclassify.errors import UsageError
from imgclassify.results.records import Prediction


class ResultsFormatError(UsageError):
    """The results file is in no format the report can read, or is malformed."""


class ResultsNotFoundError(UsageError):
    """The results file given to ``report`` does not exist."""


#: what a writer calls once, when it closes, for the run's manifest (its JSON object; None: there is none):
#: the formats with room for it in the file store it (Parquet's file metadata), the others never call it
ManifestSource = Callable[[], Mapping[str, Any] | None]


class Writer(Protocol):
    def write(self, batch: Sequence[Prediction]) -> None: ...
    def close(self) -> None: ...


@dataclass
class Recorded:
    """What an earlier run left in an output ``--resume`` continues: its paths as they read back."""

    paths: set[str] = field(default_factory=set)
    #: the file already starts with its header (CSV): write none
    has_header: bool = False


class RecordFormat:
    """One results format: everything about it in one class (a row of :class:`~imgclassify.results.formats.OutputFormat`).

    Subclasses set the class attributes and implement :meth:`writer`; the readable ones
    :meth:`read` and :meth:`sniff`, the appendable ones :meth:`resume_scan`.
    """

    #: the ``--format`` value
    name: ClassVar[str]
    #: what a file of it is, in a few words (error messages)
    description: ClassVar[str] = ""
    #: the file suffixes (lower case, with the dot) that mean this format; the first is the usual one
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: ``report`` and ``merge`` can read it back
    readable: ClassVar[bool] = True
    #: ``--resume`` can append to it
    appendable: ClassVar[bool] = False
    #: why ``--resume`` cannot append to it (the usage error's reason), when it cannot
    not_appendable: ClassVar[str] = "it cannot be appended to"
    #: a binary format: its writer writes ``stream.buffer`` (never a terminal), its files start with :attr:`magic`
    binary: ClassVar[bool] = False
    #: the bytes a file of a binary format starts with (recognised before any text format sniffs)
    magic: ClassVar[bytes] = b""

    def require(self) -> None:
        """Raise a UsageError naming the install command when this format needs an extra that is not
        installed; called before the model loads."""

    def writer(
        self,
        stream: TextIO,
        *,
        top_k: int,
        model_name: str,
        header: bool = True,
        lists: bool | None = None,
        manifest: ManifestSource | None = None,
    ) -> Writer:
        """A writer of batches of records to ``stream``. ``header=False``: continue an existing file.
        ``lists``: whether records carry their ``top_k`` list (None: when ``top_k`` > 1; a multi-label
        run with a threshold lists every class above it, however many). ``manifest``: the run's
        manifest, asked for when the writer closes (:data:`ManifestSource`)."""
        raise NotImplementedError

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        """The records in ``path`` as the README documents them; ResultsFormatError when malformed."""
        raise ResultsFormatError(f"{path}: the {self.name} format ({self.description}) cannot be read back")

    def sniff(self, head: str) -> bool:
        """Whether a file starting with ``head`` (its first characters, BOM and blanks stripped) is in this format."""
        return False

    def resume_scan(self, output: Path) -> Recorded:
        """The records already in ``output``; a record cut short by a killed run is truncated away in place."""
        raise NotImplementedError

    def resume_key(self, path: str) -> str:
        """How ``path`` reads back from a file of this format (what :meth:`resume_scan` returns for it)."""
        return path


def dumps(obj: Any) -> str:
    """One-line JSON, UTF-8 where it can be: a non-UTF-8 file name (surrogate escapes) stays exact as ``\\udcXX``."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj)
    return text


def csv_text(value: str) -> str:
    """Text a UTF-8 CSV can hold: undecodable bytes of a file name shown as ``\\xNN``."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def check_record(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` if it is a result record (a JSON object with a ``path`` string), else ResultsFormatError."""
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
        raise ResultsFormatError(f"{where}: not a result record (a JSON object with a 'path' string)")
    return obj


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes (what a resume scan keeps) when it is longer."""
    if path.stat().st_size > size:
        with open(path, "r+b") as stream:
            stream.truncate(size)
