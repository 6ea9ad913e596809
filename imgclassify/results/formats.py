"""Output formats: a rich table, a JSON array, JSON Lines, CSV. Each written batch by batch.

JSONL and CSV are flushed after every batch, so a file holds only whole records at any time;
JSON is one valid array once closed. The CSV header is fixed (``CSV_COLUMNS``).
"""

from __future__ import annotations

import csv
import enum
import json
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from imgclassify.results.records import Prediction

CSV_COLUMNS = ("path", "class_id", "wnid", "class_name", "probability", "top_k", "error", "confident")
#: the header before ``confident`` was added (still read by ``--resume``)
CSV_COLUMNS_V1 = CSV_COLUMNS[:-1]


class OutputFormat(str, enum.Enum):
    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"


SUFFIX_FORMATS = {
    ".json": OutputFormat.JSON,
    ".jsonl": OutputFormat.JSONL,
    ".ndjson": OutputFormat.JSONL,
    ".csv": OutputFormat.CSV,
}


class Writer(Protocol):
    def write(self, batch: Sequence[Prediction]) -> None: ...
    def close(self) -> None: ...


def _dumps(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a non-UTF-8 file name (surrogate escapes): JSON's \\udcXX keeps it exact
        text = json.dumps(obj)
    return text


def csv_text(value: str) -> str:
    """Text a UTF-8 CSV can hold: undecodable bytes of a file name shown as ``\\xNN``."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


class JsonlWriter:
    def __init__(self, stream: TextIO, top_k: int) -> None:
        self.stream, self.with_top_k = stream, top_k > 1

    def write(self, batch: Sequence[Prediction]) -> None:
        self.stream.write("".join(_dumps(p.to_dict(top_k=self.with_top_k)) + "\n" for p in batch))
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonWriter:
    """A JSON array, one record per line, so it streams and still diffs well."""

    def __init__(self, stream: TextIO, top_k: int) -> None:
        self.stream, self.with_top_k, self.count = stream, top_k > 1, 0

    def write(self, batch: Sequence[Prediction]) -> None:
        parts = []
        for p in batch:
            parts.append(("[\n" if self.count == 0 else ",\n") + "  " + _dumps(p.to_dict(top_k=self.with_top_k)))
            self.count += 1
        self.stream.write("".join(parts))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()


class CsvWriter:
    def __init__(self, stream: TextIO, top_k: int, *, header: bool = True) -> None:
        self.stream, self.with_top_k = stream, top_k > 1
        self.csv = csv.writer(stream, lineterminator="\n")
        if header:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, batch: Sequence[Prediction]) -> None:
        for p in batch:
            row = p.to_dict(top_k=self.with_top_k)
            top = _dumps(row["top_k"]) if "top_k" in row else ""
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


class TableWriter:
    """A rich table for people: rows printed per batch under one header, columns sized to the terminal."""

    def __init__(self, stream: TextIO, top_k: int, *, title: str) -> None:
        from rich.console import Console

        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self.top_k, self.title, self.started = top_k, title, False

    def _table(self) -> Any:
        from rich import box
        from rich.table import Table

        first = not self.started
        table = Table(
            title=self.title if first else None, show_header=first, box=box.SIMPLE_HEAD if first else box.SIMPLE,
            show_edge=False, expand=True, pad_edge=False,
        )  # fmt: skip
        table.add_column("path", ratio=3, overflow="fold")
        table.add_column("class", ratio=2, overflow="fold")
        table.add_column("probability", width=11, justify="right", no_wrap=True)
        return table

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        from rich.text import Text

        table = self._table()
        for p in batch:
            if p.error is not None:
                table.add_row(Text(csv_text(p.path)), Text(f"error: {p.error}", style="red"), "")
                continue
            best = p.top[0]
            cls = Text(f"{best.class_name} ({best.class_id})")
            if p.confident is False:
                cls.append(" unsure", style="yellow")
            prob = Text(f"{best.probability:.4f}")
            for extra in p.top[1:]:
                cls.append(f"\n  {extra.class_name} ({extra.class_id})", style="dim")
                prob.append(f"\n{extra.probability:.4f}", style="dim")
            table.add_row(Text(csv_text(p.path)), cls, prob)
        if self.started:
            table.show_header = False
        self.console.print(table)
        self.started = True
        self.console.file.flush()

    def close(self) -> None:
        self.console.file.flush()


def make_writer(fmt: OutputFormat, stream: TextIO, *, top_k: int, model_name: str, header: bool = True) -> Writer:
    """The writer for ``fmt``. ``header=False`` continues an existing CSV file."""
    if fmt is OutputFormat.TABLE:
        return TableWriter(stream, top_k, title=f"imgclassify: {model_name}")
    if fmt is OutputFormat.JSON:
        return JsonWriter(stream, top_k)
    if fmt is OutputFormat.CSV:
        return CsvWriter(stream, top_k, header=header)
    return JsonlWriter(stream, top_k)
