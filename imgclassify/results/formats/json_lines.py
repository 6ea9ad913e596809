"""JSON Lines (``.jsonl``, ``.ndjson``): one record per line, flushed per batch; ``--resume`` appends to it.

Also the one rule for a line cut short, used by every JSON Lines file the project reads (results,
the ``--sort-into`` journal): :class:`JsonLines`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from imgclassify.errors import UsageError
from imgclassify.results.formats.base import (
    ManifestSource,
    Recorded,
    RecordFormat,
    ResultsFormatError,
    Writer,
    check_record,
    dumps,
    truncate,
)
from imgclassify.results.records import Prediction


class JsonLineError(ValueError):
    """A line that is not JSON and is not the last one: the file is damaged, not cut short."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number} is not JSON ({reason})")
        self.number, self.reason = number, reason


class JsonLines:
    """The values of JSON Lines text, with the project's one rule for a line cut short.

    A process killed mid-write leaves at most its LAST line cut short: a last line without a
    trailing newline, or a last line that is not JSON, is skipped (and kept in :attr:`cut`, so
    a file about to be appended to can be truncated before it). A line that is not JSON anywhere
    else raises :class:`JsonLineError`. Blank lines are skipped. Give it lines split on ``\\n``
    only (a file opened with ``newline="\\n"``, or :func:`read_appended`), so that every reader
    of a file sees the same lines.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = lines
        #: the cut-short last line, once iterating has reached the end (None: the file ends whole)
        self.cut: str | None = None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """(line number, value) per whole line."""
        bad: tuple[int, str, str] | None = None  # a line that is not JSON: an error unless it is the last
        for number, line in enumerate(self._lines, 1):
            if bad is not None:
                raise JsonLineError(bad[0], bad[2])
            if not line.endswith("\n"):  # only the last line can end without one
                self.cut = line
                return
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                bad = (number, line, str(exc))
                continue
            yield number, value
        if bad is not None:
            self.cut = bad[1]


def read_appended(path: Path) -> tuple[list[tuple[int, Any]], int]:
    """A JSON Lines file that is appended to: its values (:class:`JsonLines`) and the bytes its whole lines fill.

    The second is the length to truncate the file to before appending (the file's length but a
    cut-short last line), so that the next line does not continue the cut one.
    """
    raw = path.read_bytes()
    lines = JsonLines(io.StringIO(raw.decode("utf-8", errors="surrogateescape"), newline="\n"))
    values = list(lines)
    cut = len(lines.cut.encode("utf-8", errors="surrogateescape")) if lines.cut is not None else 0
    return values, len(raw) - cut


class JsonlWriter:
    def __init__(self, stream: TextIO, top_k: int, lists: bool | None = None) -> None:
        self.stream, self.with_top_k = stream, top_k > 1 if lists is None else lists

    def write(self, batch: Sequence[Prediction]) -> None:
        self.stream.write("".join(dumps(p.to_dict(top_k=self.with_top_k)) + "\n" for p in batch))
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonlFormat(RecordFormat):
    name = "jsonl"
    description = "JSON Lines"
    suffixes = (".jsonl", ".ndjson")
    appendable = True

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
        return JsonlWriter(stream, top_k, lists)

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as stream:
            try:
                for number, value in JsonLines(stream):
                    yield check_record(value, f"{path}: line {number}")
            except JsonLineError as exc:
                raise ResultsFormatError(f"{path}: {exc}") from None

    def sniff(self, head: str) -> bool:
        return head.startswith("{")

    def resume_scan(self, output: Path) -> Recorded:
        if not output.exists() or output.stat().st_size == 0:
            return Recorded()
        try:
            values, keep = read_appended(output)
        except JsonLineError as exc:
            raise UsageError(
                f"--resume: {output}: {exc}, and only a last line cut short by a killed run is dropped; "
                "fix or delete that line, or write to a new --output"
            ) from None
        recorded = Recorded()
        for number, value in values:
            if not isinstance(value, dict) or not isinstance(value.get("path"), str):
                raise UsageError(
                    f"--resume: {output}: line {number} is not a result record (a JSON object with a 'path' string); "
                    "fix or delete that line, or write to a new --output"
                )
            recorded.paths.add(value["path"])
        truncate(output, keep)
        return recorded
