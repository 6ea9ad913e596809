"""``--resume``: read what an earlier, interrupted run already wrote to ``--output``.

Only whole records count. A last line cut short (the process was killed mid-write) is
truncated away before the new records are appended, so the file ends with exactly one record
per input.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from imgclassify.errors import UsageError
from imgclassify.results.formats import CSV_COLUMNS, CSV_COLUMNS_V1, OutputFormat, csv_text


def _complete_csv_prefix(text: str) -> int:
    """Length of the longest prefix that ends with a record separator outside quotes."""
    in_quotes, end = False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\n" and not in_quotes:
            end = i + 1
    return end


def recorded_paths(output: Path, fmt: OutputFormat) -> tuple[set[str], bool]:
    """Paths already recorded in ``output`` (as the writer wrote them) and whether a CSV header exists.

    Truncates a partial last record in place.
    """
    if fmt not in (OutputFormat.JSONL, OutputFormat.CSV):
        raise UsageError("--resume works with --format jsonl or csv (a JSON array cannot be appended to)")
    if not output.exists() or output.stat().st_size == 0:
        return set(), False
    raw = output.read_bytes()
    text = raw.decode("utf-8", errors="surrogateescape")
    done: set[str] = set()
    if fmt is OutputFormat.JSONL:
        keep = 0
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                done.add(json.loads(line)["path"])
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            keep += len(line.encode("utf-8", errors="surrogateescape"))
        has_header = False
    else:
        prefix = text[: _complete_csv_prefix(text)]
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
        done = {row[0] for row in rows[1:] if row}
        keep = len(prefix.encode("utf-8", errors="surrogateescape"))
    if keep < len(raw):
        with open(output, "r+b") as stream:
            stream.truncate(keep)
    return done, has_header


def resume_key(path: str, fmt: OutputFormat) -> str:
    """How ``path`` reads back from a file of format ``fmt``."""
    return csv_text(path) if fmt is OutputFormat.CSV else path
