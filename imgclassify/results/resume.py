"""``--resume``: read what an earlier, interrupted run already wrote to ``--output``.

Only whole records count. A last line cut short (the process was killed mid-write) is
truncated away before the new records are appended, so the file ends with exactly one record
per input; a damaged record before the last one is an error. Each format does its own scan
(:meth:`~imgclassify.results.formats.base.RecordFormat.resume_scan`); these are thin wrappers
over the formats' table.
"""

from __future__ import annotations

from pathlib import Path

from imgclassify.errors import UsageError
from imgclassify.results.formats import OutputFormat


def check_appendable(fmt: OutputFormat) -> None:
    """A UsageError unless ``--resume`` can append to ``fmt`` (the table's ``appendable``), saying why not."""
    if fmt.record_format.appendable:
        return
    appendable = " or ".join(f.value for f in OutputFormat if f.record_format.appendable)
    suffixes = " or ".join(f"FILE{f.record_format.suffixes[0]}" for f in OutputFormat if f.record_format.appendable)
    raise UsageError(
        f"--resume works with --format {appendable} ({fmt.record_format.not_appendable}); "
        f"write to a new --output, or use -o {suffixes} for a run you may need to resume"
    )


def recorded_paths(output: Path, fmt: OutputFormat) -> tuple[set[str], bool]:
    """Paths already recorded in ``output`` (as the writer wrote them) and whether a CSV header exists.

    Truncates a partial last record in place. A thin wrapper over ``fmt.record_format.resume_scan``.
    """
    check_appendable(fmt)
    recorded = fmt.record_format.resume_scan(output)
    return recorded.paths, recorded.has_header


def resume_key(path: str, fmt: OutputFormat) -> str:
    """How ``path`` reads back from a file of format ``fmt`` (a thin wrapper over ``fmt.record_format.resume_key``)."""
    return fmt.record_format.resume_key(path)
