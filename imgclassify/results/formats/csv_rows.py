"""CSV (``.csv``): a fixed header (:data:`CSV_COLUMNS`), a row per record, flushed per batch; ``--resume`` appends to it.

Read by header name (extra columns ignored, missing ones null, ``top_k`` a JSON cell). A file
name that is not UTF-8 is written with its undecodable bytes as ``\\xNN`` (:func:`csv_text`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from imgclassify.errors import UsageError
from imgclassify.results.formats.base import (
    ManifestSource,
    Recorded,
    RecordFormat,
    ResultsFormatError,
    Writer,
    csv_text,
    dumps,
    truncate,
)
from imgclassify.results.records import Prediction

CSV_COLUMNS = ("path", "class_id", "wnid", "class_name", "probability", "top_k", "error", "confident")
#: the header before ``confident`` was added (still read by ``--resume``)
CSV_COLUMNS_V1 = CSV_COLUMNS[:-1]


class CsvWriter:
    def __init__(self, stream: TextIO, top_k: int, *, header: bool = True, lists: bool | None = None) -> None:
        self.stream, self.with_top_k = stream, top_k > 1 if lists is None else lists
        self.csv = csv.writer(stream, lineterminator="\n")
        if header:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, batch: Sequence[Prediction]) -> None:
        for p in batch:
            row = p.to_dict(top_k=self.with_top_k)
            top = dumps(row["top_k"]) if "top_k" in row else ""
            self.csv.writerow(
                [
                    csv_text(row["path"]),
                    row["class_id"],
                    row["wnid"],
                    row["class_name"],
                    row["probability"],
                    top,
                    row["error"],
                    "" if row["confident"] is None else str(row["confident"]).lower(),
                ]
            )
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def _cell(row: dict[str, str | None], name: str) -> str | None:
    value = row.get(name)
    return value if value not in (None, "") else None


def _int(value: str | None, where: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ResultsFormatError(f"{where}: {value!r} is not a class id (an integer)") from None


def _float(value: str | None, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ResultsFormatError(f"{where}: {value!r} is not a probability (a number)") from None


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return None


def _complete_prefix(text: str) -> int:
    """Length of the longest prefix that ends with a record separator outside quotes."""
    in_quotes, end = False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\n" and not in_quotes:
            end = i + 1
    return end


def _ends_whole(path: Path) -> bool:
    """The file is empty or ends with a line ending (the end of a record the writer finished)."""
    with open(path, "rb") as raw:
        size = raw.seek(0, os.SEEK_END)
        if size == 0:
            return True
        raw.seek(size - 1)
        return raw.read(1) in (b"\n", b"\r")


class CsvFormat(RecordFormat):
    name = "csv"
    description = "CSV with a 'path' column"
    suffixes = (".csv",)
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
        return CsvWriter(stream, top_k, header=header, lists=lists)

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        """The records; a last record cut short by a killed run (the file does not end with a
        newline: every record the writer finishes does) is skipped, as for JSON Lines."""
        whole = _ends_whole(path)
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as stream:
            reader = csv.DictReader(stream)
            if "path" not in (reader.fieldnames or []):
                raise ResultsFormatError(f"{path}: the CSV header has no 'path' column (expected path,class_id,...)")
            pending: tuple[dict[str, Any], str] | None = None
            for row in reader:
                if pending is not None:
                    yield self._record(*pending)
                pending = (row, f"{path}: line {reader.line_num}")
            if pending is not None and whole:
                yield self._record(*pending)

    @staticmethod
    def _record(row: dict[str, Any], where: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "path": row.get("path") or "",
            "class_id": _int(_cell(row, "class_id"), where),
            "wnid": _cell(row, "wnid"),
            "class_name": _cell(row, "class_name"),
            "probability": _float(_cell(row, "probability"), where),
            "error": _cell(row, "error"),
        }
        top = _cell(row, "top_k")
        if top is not None:
            try:
                record["top_k"] = json.loads(top)
            except json.JSONDecodeError:
                raise ResultsFormatError(f"{where}: the top_k cell is not a JSON list") from None
        if "confident" in row:
            record["confident"] = _bool(_cell(row, "confident"))
        return record

    def sniff(self, head: str) -> bool:
        return "path" in next(csv.reader([head.split("\n", 1)[0]]), [])

    def resume_scan(self, output: Path) -> Recorded:
        if not output.exists() or output.stat().st_size == 0:
            return Recorded()
        text = output.read_bytes().decode("utf-8", errors="surrogateescape")
        prefix = text[: _complete_prefix(text)]
        rows = list(csv.reader(io.StringIO(prefix, newline="")))
        has_header = bool(rows) and tuple(rows[0]) == CSV_COLUMNS
        if rows and tuple(rows[0]) == CSV_COLUMNS_V1:
            raise UsageError(
                f"--resume: {output} was written by an older imgclassify (its CSV has no 'confident' column), "
                "so new records would not fit its header; write to a new --output, or convert the file to JSON "
                "Lines and resume that"
            )
        if rows and not has_header:
            raise UsageError(f"--resume: {output} does not start with imgclassify's CSV header")
        truncate(output, len(prefix.encode("utf-8", errors="surrogateescape")))
        return Recorded({row[0] for row in rows[1:] if row}, has_header)

    def resume_key(self, path: str) -> str:
        return csv_text(path)
