"""Where embeddings go: Parquet (``path``, ``vector``, ``model``, ``error``), or ``.npy`` with a JSONL of records.

Both are written as batches come, in bounded memory, and both continue with ``--resume``:

* ``.parquet`` (``.pq``): one row per input, ``vector`` a list of float32 (null for a failed file).
  Rows are buffered into row groups of :data:`ROW_GROUP` and written to a temporary beside the
  output, which becomes the output when the run ends (completed, or stopped by SIGINT/SIGTERM or
  ``--max-failures``: the file then holds what was done). ``--resume`` copies the rows already
  there, row group by row group, into a new file and appends the rest; a run killed outright
  (SIGKILL, a power cut) leaves the previous output as it was.
* ``.npy``: a float32 array of one row per input (row i: the i-th input), created at its full
  size and filled as batches come (a memory map, flushed per batch); beside it ``FILE.jsonl``
  (``embeddings.npy`` -> ``embeddings.jsonl``), one record per input as its row is on disk:
  ``{"path", "row", "error"}`` (``row`` null for a failed file, whose row stays zeros).
  ``--resume`` skips the recorded inputs, even after a kill (a record cut short is dropped).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from imgclassify.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

#: rows per Parquet row group (about 5 MB of 1280-long vectors)
ROW_GROUP = 1024

#: (input index, path, vector or None, error or None)
Row = tuple[int, str, "np.ndarray | None", "str | None"]


class EmbeddingFormat(str, enum.Enum):
    PARQUET = "parquet"
    NPY = "npy"


SUFFIXES = {".parquet": EmbeddingFormat.PARQUET, ".pq": EmbeddingFormat.PARQUET, ".npy": EmbeddingFormat.NPY}


def format_for(output: Path) -> EmbeddingFormat:
    """The format an output's suffix names."""
    fmt = SUFFIXES.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"--output {output}: give a file ending in .parquet (or .pq) or .npy")
    return fmt


def records_path(output: Path) -> Path:
    """``embeddings.npy`` -> ``embeddings.jsonl``: the records beside an ``.npy``."""
    return output.with_suffix(".jsonl")


class EmbeddingWriter(Protocol):
    #: the paths already recorded (``--resume``: these are skipped)
    done: set[str]

    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self, *, commit: bool) -> None: ...


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        from imgclassify.extras import install_hint

        raise UsageError(
            f"Parquet output needs pyarrow (the parquet extra): {install_hint('parquet')}; or write --output FILE.npy"
        ) from None
    return pyarrow


class ParquetWriter:
    """Rows to a Parquet file through a temporary beside it (see the module's docstring)."""

    def __init__(self, output: Path, *, model: str, dim: int, resume: bool) -> None:
        pa = _pyarrow()
        self.pa, self.output, self.model, self.dim = pa, output, model, dim
        self.schema = pa.schema(
            [
                ("path", pa.string()),
                ("vector", pa.list_(pa.float32())),
                ("model", pa.string()),
                ("error", pa.string()),
            ]
        )
        self.tmp = output.with_name(f".{output.name[:60]}.{os.getpid()}.part")
        self.writer = pa.parquet.ParquetWriter(str(self.tmp), self.schema)
        self.buffer: list[Row] = []
        self.done: set[str] = set()
        if resume and output.exists():
            self._copy_previous()

    def _copy_previous(self) -> None:
        pq = self.pa.parquet
        try:
            previous = pq.ParquetFile(str(self.output))
        except Exception as exc:
            raise UsageError(f"--resume: {self.output} is not a readable Parquet file ({exc})") from None
        if previous.schema_arrow.names != self.schema.names:
            raise UsageError(
                f"--resume: {self.output} is not an embeddings file (columns {previous.schema_arrow.names})"
            )
        for group in range(previous.num_row_groups):
            table = previous.read_row_group(group)
            vectors = table.column("vector").drop_null()
            if len(vectors) and len(vectors[0]) != self.dim:
                raise UsageError(
                    f"--resume: {self.output} holds vectors of {len(vectors[0])} values; this model gives {self.dim}"
                )
            self.done.update(str(p) for p in table.column("path").to_pylist())
            self.writer.write_table(table.cast(self.schema))

    def write(self, rows: Sequence[Row]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        pa = self.pa
        vectors = [None if v is None else v.astype("float32", copy=False) for _, _, v, _ in self.buffer]
        table = pa.table(
            {
                "path": pa.array([p for _, p, _, _ in self.buffer], pa.string()),
                "vector": pa.array(vectors, pa.list_(pa.float32())),
                "model": pa.array([self.model] * len(self.buffer), pa.string()),
                "error": pa.array([e for _, _, _, e in self.buffer], pa.string()),
            },
            schema=self.schema,
        )
        self.writer.write_table(table)
        self.buffer.clear()

    def close(self, *, commit: bool) -> None:
        try:
            if commit:
                self._flush()
            self.writer.close()
            if commit:
                os.replace(self.tmp, self.output)
        finally:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)


class NpyWriter:
    """Rows into an ``.npy`` memory map, with their records beside it (see the module's docstring)."""

    def __init__(self, output: Path, *, paths: Sequence[str], dim: int, resume: bool) -> None:
        import numpy as np

        self.output, self.records = output, records_path(output)
        self.done: set[str] = set()
        shape = (len(paths), dim)
        if resume and output.exists():
            try:
                self.array = np.lib.format.open_memmap(output, mode="r+")
            except (OSError, ValueError) as exc:
                raise UsageError(f"--resume: {output} is not a readable .npy file ({exc})") from None
            if self.array.shape != shape or self.array.dtype != np.float32:
                raise UsageError(
                    f"--resume: {output} holds {self.array.dtype} {self.array.shape}, this run needs float32 {shape} "
                    "(one row per input): give the same inputs, or write to a new --output"
                )
            self._read_records(paths)
            self.stream = open(self.records, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        else:
            self.array = np.lib.format.open_memmap(output, mode="w+", dtype=np.float32, shape=shape)
            self.stream = open(self.records, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115

    def _read_records(self, paths: Sequence[str]) -> None:
        from imgclassify.results.formats.base import truncate
        from imgclassify.results.formats.json_lines import JsonLineError, read_appended

        try:
            entries, whole = read_appended(self.records)
        except FileNotFoundError:
            return
        except JsonLineError as exc:
            raise UsageError(f"--resume: {self.records}: {exc}") from None
        for number, entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise UsageError(f"--resume: {self.records}: line {number} is not an embedding record")
            row = entry.get("row")
            if row is not None and (
                not isinstance(row, int) or not 0 <= row < len(paths) or paths[row] != entry["path"]
            ):
                raise UsageError(
                    f"--resume: {self.records}: line {number} puts {entry['path']} at row {row}, which this run gives "
                    "to another input: give the same inputs in the same order, or write to a new --output"
                )
            self.done.add(entry["path"])
        truncate(self.records, whole)  # a record cut short by a kill: its input is embedded again

    def write(self, rows: Sequence[Row]) -> None:
        for index, _, vector, _ in rows:
            if vector is not None:
                self.array[index] = vector
        self.array.flush()  # the rows are on disk before their records say so
        self.stream.write(
            "".join(
                json.dumps({"path": path, "row": None if vector is None else index, "error": error}, ensure_ascii=False)
                + "\n"
                for index, path, vector, error in rows
            )
        )
        self.stream.flush()

    def close(self, *, commit: bool) -> None:
        self.array.flush()
        del self.array
        self.stream.close()


def open_writer(
    fmt: EmbeddingFormat, output: Path, *, paths: Sequence[str], model: str, dim: int, resume: bool
) -> EmbeddingWriter:
    if fmt is EmbeddingFormat.PARQUET:
        return ParquetWriter(output, model=model, dim=dim, resume=resume)
    return NpyWriter(output, paths=paths, dim=dim, resume=resume)
