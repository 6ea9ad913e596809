"""The results formats (table, JSON, JSON Lines, CSV, Parquet): one class per format, one table of them (``OutputFormat``).

A format's class (a :class:`~imgclassify.results.formats.base.RecordFormat`) holds everything
about it: its ``--format`` name and file suffixes, its writer, its reader (what ``report`` and
``merge`` read), whether ``--resume`` can append to it and how it scans what a run left, and how
its content is recognised. :class:`OutputFormat` is the table: one row per format, and the one
enum of the names (``predict --format``; ``report --format`` takes the readable ones). The
lookups by suffix and by content go through the table.

Adding a format is one class (a module here) and one row in :class:`OutputFormat`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from imgclassify.results.formats.base import (
    ManifestSource,
    Recorded,
    RecordFormat,
    ResultsFormatError,
    ResultsNotFoundError,
    Writer,
    csv_text,
)
from imgclassify.results.formats.csv_rows import CSV_COLUMNS, CSV_COLUMNS_V1, CsvFormat, CsvWriter
from imgclassify.results.formats.json_array import JsonFormat, JsonWriter
from imgclassify.results.formats.json_lines import JsonlFormat, JsonLineError, JsonLines, JsonlWriter
from imgclassify.results.formats.parquet import ParquetFormat, ParquetWriter
from imgclassify.results.formats.table import TableFormat, TableWriter

__all__ = [
    "CSV_COLUMNS",
    "CSV_COLUMNS_V1",
    "SUFFIX_FORMATS",
    "CsvFormat",
    "CsvWriter",
    "JsonFormat",
    "JsonLineError",
    "JsonLines",
    "JsonWriter",
    "JsonlFormat",
    "JsonlWriter",
    "ManifestSource",
    "OutputFormat",
    "ParquetFormat",
    "ParquetWriter",
    "RecordFormat",
    "Recorded",
    "ResultsFormatError",
    "ResultsNotFoundError",
    "TableFormat",
    "TableWriter",
    "Writer",
    "csv_text",
    "detect_format",
    "format_for_suffix",
    "make_writer",
    "read_records",
    "readable_format",
]


class OutputFormat(str, enum.Enum):
    """The table of formats: a member per format, its value the ``--format`` name, its row the format's class.

    ``fmt.record_format`` is the format itself; ``OutputFormat("jsonl")`` looks one up by name.
    The order is the order of content sniffing (:func:`detect_format`).
    """

    record_format: RecordFormat

    # called once per row below, when the class is made; OutputFormat("jsonl") looks a member up by
    # its name and never calls this (hence the `str` in the signature, for the type checker)
    def __new__(cls, record_format: RecordFormat | str) -> OutputFormat:
        assert isinstance(record_format, RecordFormat), "a row of OutputFormat is a RecordFormat"
        member = str.__new__(cls, record_format.name)
        member._value_ = record_format.name
        member.record_format = record_format
        return member

    TABLE = TableFormat()
    JSON = JsonFormat()
    JSONL = JsonlFormat()
    CSV = CsvFormat()
    PARQUET = ParquetFormat()


def _either(words: list[str], last: str = "or") -> str:
    return ", ".join(words[:-1]) + f" {last} " + words[-1] if len(words) > 1 else "".join(words)


def readable_formats() -> list[OutputFormat]:
    """The formats ``report`` and ``merge`` can read (``report --format``)."""
    return [fmt for fmt in OutputFormat if fmt.record_format.readable]


def format_for_suffix(path: Path) -> OutputFormat | None:
    """The format ``path``'s suffix names (``.json``, ``.jsonl``, ``.ndjson``, ``.csv``, ``.parquet``), or None."""
    suffix = path.suffix.lower()
    for fmt in OutputFormat:
        if suffix in fmt.record_format.suffixes:
            return fmt
    return None


def readable_format(name: str) -> OutputFormat:
    """``report --format NAME``: the readable format of that name, else ResultsFormatError."""
    for fmt in readable_formats():
        if fmt.value == name.lower():
            return fmt
    names = _either([fmt.value for fmt in readable_formats()])
    raise ResultsFormatError(f"unknown --format {name!r}; use {names}")


def detect_format(path: Path) -> OutputFormat:
    """The readable format from the suffix, else from the content: a binary format's ``magic`` first, then
    each text format's ``sniff``, in table order."""
    by_suffix = format_for_suffix(path)
    if by_suffix is not None and by_suffix.record_format.readable:
        return by_suffix
    with open(path, "rb") as stream:
        raw = stream.read(4096)
    for fmt in readable_formats():
        if fmt.record_format.magic and raw.startswith(fmt.record_format.magic):
            return fmt
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    for fmt in readable_formats():
        if fmt.record_format.binary:
            continue
        if fmt.record_format.sniff(text):
            return fmt
    readable = [fmt.record_format for fmt in readable_formats()]
    raise ResultsFormatError(
        f"{path}: unknown results format (not {_either([f.description for f in readable])}); "
        f"name the file {_either([f.suffixes[0] for f in readable])}, "
        f"or pass --format {'|'.join(f.name for f in readable)}"
    )


def read_records(path: Path, fmt: OutputFormat | None = None) -> Iterator[dict[str, Any]]:
    """Records from a results file of any readable format (``fmt``, else :func:`detect_format`): dicts with the README's fields.

    CSV columns are read by header name (extra columns ignored, missing ones null; ``top_k``
    parsed from its JSON cell, empty cells null). A JSONL file's cut-short last line is skipped
    (:class:`~imgclassify.results.formats.json_lines.JsonLines`).
    """
    if not path.is_file():
        raise ResultsNotFoundError(
            f"results file {path} not found; pass the file a run wrote with `imgclassify predict ... -o FILE`"
        )
    return (fmt if fmt is not None else detect_format(path)).record_format.read(path)


# -- thin wrappers over the table, for the callers that predate it ---------------------------------

#: suffix -> format, from the table (a thin wrapper: prefer :func:`format_for_suffix`)
SUFFIX_FORMATS: dict[str, OutputFormat] = {suffix: fmt for fmt in OutputFormat for suffix in fmt.record_format.suffixes}


def make_writer(
    fmt: OutputFormat,
    stream: TextIO,
    *,
    top_k: int,
    model_name: str,
    header: bool = True,
    lists: bool | None = None,
    manifest: ManifestSource | None = None,
) -> Writer:
    """The writer for ``fmt``. ``header=False`` continues an existing CSV file; ``manifest``: the run's
    manifest, asked for at close by the formats that store it (Parquet).

    A thin wrapper over the table: ``fmt.record_format.writer(...)``.
    """
    return fmt.record_format.writer(
        stream, top_k=top_k, model_name=model_name, header=header, lists=lists, manifest=manifest
    )
