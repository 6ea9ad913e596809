"""Parquet (``.parquet``, the parquet extra: pyarrow): a typed column per field, written in row groups; not appendable.

The schema (:func:`schema`) is documented in ``docs/output.md``. Records are buffered and written
a row group of :data:`ROW_GROUP_RECORDS` at a time, so memory stays flat whatever the input
count; the file is whole once the writer closes (its footer indexes the row groups), and its
file metadata then holds, under ``imgclassify``, the format version and the run's manifest. A
file name that is not UTF-8 is written as text with its undecodable bytes as ``\\xNN``
(:func:`~imgclassify.results.formats.base.csv_text`) and, exactly, in ``path_bytes``; the reader
gives back the same ``path`` as JSON Lines. Read back a row group at a time.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from imgclassify.errors import UsageError
from imgclassify.extras import install_hint
from imgclassify.results.formats.base import (
    ManifestSource,
    RecordFormat,
    ResultsFormatError,
    Writer,
    csv_text,
    dumps,
)
from imgclassify.results.records import Prediction

#: the version of the layout below, in the file metadata (``imgclassify`` -> ``format_version``)
PARQUET_FORMAT = 1
#: the file metadata key that holds ``{"format_version": ..., "manifest": {...}}``
METADATA_KEY = "imgclassify"
#: records per row group (the last one holds the rest): what the writer holds in memory at most
ROW_GROUP_RECORDS = 1000
PARQUET_HINT = f"the parquet format needs pyarrow (the parquet extra): {install_hint('parquet')}"

_RECORD_COLUMNS = ("path", "class_id", "wnid", "class_name", "probability", "top_k", "error", "confident")


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or a UsageError naming the install command."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError(PARQUET_HINT) from None
    return pyarrow, pyarrow.parquet


@functools.cache
def schema() -> Any:
    """The columns (a ``pyarrow.Schema``): the record's fields in JSON Lines order, then ``path_bytes``."""
    pa, _ = _pyarrow()
    candidate = pa.struct(
        [
            pa.field("class_id", pa.int32(), nullable=False),
            pa.field("wnid", pa.string()),
            pa.field("class_name", pa.string()),
            pa.field("probability", pa.float64(), nullable=False),
        ]
    )
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("class_id", pa.int32()),
            pa.field("wnid", pa.string()),
            pa.field("class_name", pa.string()),
            pa.field("probability", pa.float64()),
            pa.field("top_k", pa.list_(pa.field("element", candidate, nullable=False))),
            pa.field("error", pa.string()),
            pa.field("confident", pa.bool_()),
            pa.field("path_bytes", pa.binary()),
        ]
    )


def _text(value: str | None) -> str | None:
    """Text a Parquet string can hold (UTF-8): undecodable bytes as ``\\xNN``."""
    return value if value is None or value.isascii() else csv_text(value)


def _path(path: str) -> tuple[str, bytes | None]:
    """The ``path`` cell and the ``path_bytes`` cell: the exact bytes only when the name is not UTF-8."""
    if path.isascii():
        return path, None
    shown = csv_text(path)
    return shown, (path.encode("utf-8", errors="surrogateescape") if shown != path else None)


def _columns(rows: Sequence[Prediction], lists: bool) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in schema().names}
    for p in rows:
        best = p.best
        shown, exact = _path(p.path)
        columns["path"].append(shown)
        columns["path_bytes"].append(exact)
        columns["class_id"].append(best.class_id if best else None)
        columns["wnid"].append(_text(best.wnid) if best else None)
        columns["class_name"].append(_text(best.class_name) if best else None)
        columns["probability"].append(best.probability if best else None)
        columns["top_k"].append(
            [
                {
                    "class_id": c.class_id,
                    "wnid": _text(c.wnid),
                    "class_name": _text(c.class_name),
                    "probability": c.probability,
                }
                for c in p.top
            ]
            if lists
            else None
        )
        columns["error"].append(_text(p.error))
        columns["confident"].append(p.confident)
    return columns


def binary_stream(stream: TextIO) -> IO[bytes]:
    """The bytes under ``stream`` (a file opened as text, or stdout when it is a file or a pipe)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        raise UsageError("the parquet format is binary: write it to a file (--output FILE.parquet)")
    if stream.isatty():
        raise UsageError("the parquet format is binary, not for a terminal: write it to --output FILE.parquet")
    stream.flush()
    return buffer  # type: ignore[no-any-return]


class ParquetWriter:
    """Records buffered into row groups of ``row_group_size``, written by ``pyarrow.parquet.ParquetWriter``."""

    def __init__(
        self,
        stream: TextIO,
        top_k: int,
        *,
        lists: bool | None = None,
        manifest: ManifestSource | None = None,
        row_group_size: int = ROW_GROUP_RECORDS,
    ) -> None:
        pa, pq = _pyarrow()
        self.pa, self.with_top_k, self.manifest = pa, top_k > 1 if lists is None else lists, manifest
        self.row_group_size = max(1, row_group_size)
        self.rows: list[Prediction] = []
        self.sink = binary_stream(stream)
        self.writer = pq.ParquetWriter(self.sink, schema())
        self.closed = False

    def write(self, batch: Sequence[Prediction]) -> None:
        self.rows.extend(batch)
        while len(self.rows) >= self.row_group_size:
            self._row_group(self.rows[: self.row_group_size])
            del self.rows[: self.row_group_size]

    def _row_group(self, rows: Sequence[Prediction]) -> None:
        columns = _columns(rows, self.with_top_k)
        table = self.pa.Table.from_pydict(columns, schema=schema())
        self.writer.write_table(table, row_group_size=len(rows))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.rows:
            self._row_group(self.rows)
            self.rows = []
        metadata: dict[str, Any] = {"format_version": PARQUET_FORMAT}
        manifest = self.manifest() if self.manifest is not None else None
        if manifest is not None:
            metadata["manifest"] = dict(manifest)
        self.writer.add_key_value_metadata({METADATA_KEY: dumps(metadata)})
        self.writer.close()
        self.sink.flush()


def file_metadata(path: Path) -> dict[str, Any] | None:
    """The ``imgclassify`` entry of ``path``'s file metadata (``format_version`` and, from a run with a
    manifest, ``manifest``); None when the file has none."""
    _, pq = _pyarrow()
    entries = pq.read_metadata(path).metadata or {}
    raw = entries.get(METADATA_KEY.encode())
    return None if raw is None else dict(json.loads(raw))


def _record(row: dict[str, Any], where: str) -> dict[str, Any]:
    exact, path = row.get("path_bytes"), row.get("path")
    if exact is not None:
        path = bytes(exact).decode("utf-8", errors="surrogateescape")
    if not isinstance(path, str):
        raise ResultsFormatError(f"{where}: not a result record (no 'path' string)")
    record: dict[str, Any] = {"path": path}
    for name in ("class_id", "wnid", "class_name", "probability"):
        record[name] = row.get(name)
    if row.get("top_k") is not None:
        record["top_k"] = [dict(candidate) for candidate in row["top_k"]]
    record["error"] = row.get("error")
    record["confident"] = row.get("confident")
    return record


class ParquetFormat(RecordFormat):
    """Not appendable: the footer, written once when the file closes, indexes every row group."""

    name = "parquet"
    description = "Parquet"
    suffixes = (".parquet",)
    binary = True
    magic = b"PAR1"
    not_appendable = "a Parquet file cannot be appended to: its footer is written once, when the run ends"

    def require(self) -> None:
        _pyarrow()

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
        return ParquetWriter(stream, top_k, lists=lists, manifest=manifest)

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        pa, pq = _pyarrow()
        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ResultsFormatError(
                f"{path}: not a whole Parquet file ({exc}); a run stopped before it closed the file leaves "
                "it without its footer: run it again"
            ) from None
        with file:
            present = set(file.schema_arrow.names)
            if "path" not in present:
                raise ResultsFormatError(
                    f"{path}: the Parquet file has no 'path' column (expected path, class_id, ...)"
                )
            columns = [name for name in (*_RECORD_COLUMNS, "path_bytes") if name in present]
            number = 0
            for group in range(file.num_row_groups):
                for row in file.read_row_group(group, columns=columns).to_pylist():
                    number += 1
                    yield _record(row, f"{path}: row {number}")
