"""``imgclassify report``: one self-contained HTML page from a results file and its manifest.

The page holds everything (no network, no CDN): the records as one JSON blob, the thumbnails
as base64 JPEGs in a second JSON array, and the template's CSS and JavaScript. Thumbnails are
made one at a time with the project's decoder (:func:`imgclassify.decode.imaging.open_image`, EXIF
orientation applied) and written straight to the output file, so memory stays bounded
whatever the number of images. The page builds cards only for the page on screen.

Everything from the data is embedded as JSON inside ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped, and rendered by the page with ``textContent``, never as HTML.
"""

from __future__ import annotations

import base64
import csv
import enum
import html
import io
import json
import math
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from imgclassify.decode.imaging import DecodeOptions, open_image
from imgclassify.errors import ImageError, UsageError
from imgclassify.results.formats import SUFFIX_FORMATS, OutputFormat, csv_text
from imgclassify.system.fs import replaced_atomically


class ResultsNotFoundError(UsageError):
    """The results file given to ``report`` does not exist."""


class ResultsFormatError(UsageError):
    """The results file is in no format the report can read, or is malformed."""


class ManifestError(UsageError):
    """``--manifest FILE`` does not exist or is not JSON."""


class ResultsFormat(str, enum.Enum):
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"


DEFAULT_THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 75
TEMPLATE = "report.html"
_THUMBS_MARK = "__IMGCLASSIFY_THUMBS__"
_DATA_MARK = "__IMGCLASSIFY_DATA__"
_TITLE_MARK = "__IMGCLASSIFY_TITLE__"


def detect_format(path: Path) -> ResultsFormat:
    """The format from the suffix (``.json``, ``.jsonl``/``.ndjson``, ``.csv``), else sniffed from the content."""
    by_suffix = SUFFIX_FORMATS.get(path.suffix.lower())
    if by_suffix is not None and by_suffix is not OutputFormat.TABLE:
        return ResultsFormat(by_suffix.value)
    with open(path, encoding="utf-8", errors="replace") as stream:
        head = stream.read(4096)
    text = head.lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return ResultsFormat.JSON
    if text.startswith("{"):
        return ResultsFormat.JSONL
    first_line = text.split("\n", 1)[0]
    if "path" in next(csv.reader([first_line]), []):
        return ResultsFormat.CSV
    raise ResultsFormatError(
        f"{path}: unknown results format (not a JSON array, JSON Lines or CSV with a 'path' column); "
        "name the file .json, .jsonl or .csv, or pass --format json|jsonl|csv"
    )


def _check_record(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
        raise ResultsFormatError(f"{where}: not a result record (a JSON object with a 'path' string)")
    return obj


def _read_json(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsFormatError(
            f"{path}: not valid JSON ({exc}); if it holds one record per line, name it .jsonl or pass --format jsonl"
        ) from None
    if not isinstance(data, list):
        raise ResultsFormatError(f"{path}: a JSON results file holds an array of records; this one holds no array")
    for number, obj in enumerate(data, 1):
        yield _check_record(obj, f"{path}: record {number}")


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as stream:
        lines = iter(enumerate(stream, 1))
        pending: tuple[int, str] | None = None
        for number, line in lines:
            if pending is not None:  # a bad line that turned out not to be the last one
                raise ResultsFormatError(f"{path}: line {pending[0]} is not JSON ({pending[1]})")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                # a run killed mid-write may leave one cut-short last line: skip that one only
                pending = (number, str(exc))
                continue
            yield _check_record(obj, f"{path}: line {number}")


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


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as stream:
        reader = csv.DictReader(stream)
        if "path" not in (reader.fieldnames or []):
            raise ResultsFormatError(f"{path}: the CSV header has no 'path' column (expected path,class_id,...)")
        for row in reader:
            where = f"{path}: line {reader.line_num}"
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
            yield record


def read_records(path: Path, fmt: ResultsFormat | None = None) -> Iterator[dict[str, Any]]:
    """Records from a results file of any output format: dicts with the README's fields.

    CSV columns are read by header name (extra columns ignored, missing ones null; ``top_k``
    parsed from its JSON cell, empty cells null). A JSONL file's cut-short last line is skipped.
    """
    if not path.is_file():
        raise ResultsNotFoundError(
            f"results file {path} not found; pass the file a run wrote with `imgclassify predict ... -o FILE`"
        )
    fmt = fmt or detect_format(path)
    if fmt is ResultsFormat.JSON:
        return _read_json(path)
    if fmt is ResultsFormat.CSV:
        return _read_csv(path)
    return _read_jsonl(path)


def default_manifest(results: Path) -> Path | None:
    """The manifest a run writes beside its output: ``RESULTS.manifest.json`` (also ``STEM.manifest.json``)."""
    for candidate in (
        results.with_name(results.name + ".manifest.json"),
        results.with_name(results.stem + ".manifest.json"),
    ):
        if candidate.is_file():
            return candidate
    return None


def _clean(value: Any) -> Any:
    """JSON-ready data with every string valid Unicode: undecodable bytes shown as ``\\xNN``, as in CSV."""
    if isinstance(value, str):
        return csv_text(value)
    if isinstance(value, dict):
        return {csv_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` left to end it."""
    text = json.dumps(_clean(value), ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _top_k(record: dict[str, Any]) -> list[list[Any]] | None:
    top = record.get("top_k")
    if not isinstance(top, list):
        return None
    rows = []
    for item in top:
        if isinstance(item, dict):
            rows.append([item.get("class_id"), item.get("class_name"), item.get("probability")])
    return rows or None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _entry(record: dict[str, Any]) -> dict[str, Any]:
    """The page's view of one record (short and fixed keys)."""
    confident = record.get("confident")
    class_id = record.get("class_id")
    return {
        "path": record["path"],
        "class_id": class_id if isinstance(class_id, int) and not isinstance(class_id, bool) else None,
        "class_name": record.get("class_name") if isinstance(record.get("class_name"), str) else None,
        "wnid": record.get("wnid") if isinstance(record.get("wnid"), str) else None,
        "probability": _number(record.get("probability")),
        "top_k": _top_k(record),
        "confident": confident if isinstance(confident, bool) else None,
        "error": None if record.get("error") is None else str(record.get("error")),
    }


def _failed(entry: dict[str, Any]) -> bool:
    return entry["error"] is not None or (entry["class_id"] is None and entry["class_name"] is None)


def _resolve(path: str, results: Path, base_dir: Path | None) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    bases = [base_dir] if base_dir is not None else [Path.cwd(), results.parent]
    for base in bases:
        if (base / candidate).exists():
            return base / candidate
    return bases[0] / candidate


def make_thumbnail(path: Path, size: int, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A JPEG at most ``size`` px on its longer side, decoded as ``predict`` decodes (EXIF orientation applied).

    Big JPEGs decode at reduced scale (libjpeg's DCT scaling). Raises ImageError for any file
    that cannot be read or decoded.
    """
    image = open_image(path, DecodeOptions(fast=True), short_side=size)
    try:
        image.thumbnail((size, size), reducing_gap=2.0)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=True)
    except Exception as exc:
        raise ImageError(f"cannot make a thumbnail: {type(exc).__name__}: {exc}"[:300]) from None
    return out.getvalue()


@dataclass
class ReportSummary:
    """What ``write_report`` wrote."""

    output: Path
    records: int = 0
    classified: int = 0
    failed: int = 0
    #: (class_id, class_name, count), most frequent first
    classes: list[tuple[int | None, str | None, int]] = field(default_factory=list)
    thumbnails: int = 0
    #: thumbnails replaced by a placeholder (file gone, not decodable)
    placeholders: int = 0
    manifest: Path | None = None
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        made = f", {self.thumbnails} thumbnails" if self.thumbnails or self.placeholders else ""
        missing = f" ({self.placeholders} unreadable: placeholders)" if self.placeholders else ""
        manifest = f"manifest {self.manifest}" if self.manifest else "no manifest"
        return (
            f"wrote {self.output}: {self.records} records ({self.classified} classified, {self.failed} failed), "
            f"{len(self.classes)} classes{made}{missing}, {manifest}, {_size(self.bytes)}"
        )


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _template() -> tuple[str, str, str]:
    text = resources.files("imgclassify").joinpath("data", TEMPLATE).read_text(encoding="utf-8")
    head, rest = text.split(_THUMBS_MARK)
    middle, tail = rest.split(_DATA_MARK)
    return head, middle, tail


def _read_manifest(manifest: Path | None, results: Path, summary: ReportSummary) -> dict[str, Any]:
    """The manifest section's data: ``{"path": ..., "data": ...}``, or a note why there is none."""
    if manifest is not None and not manifest.is_file():
        raise ManifestError(
            f"manifest {manifest} not found; leave out --manifest to use {results.name}.manifest.json beside the results"
        )
    explicit = manifest is not None
    manifest = manifest or default_manifest(results)
    if manifest is None:
        return {"path": None, "data": None, "note": f"no manifest ({results.name}.manifest.json not found)"}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if explicit:
            raise ManifestError(
                f"manifest {manifest} is not readable JSON ({exc}); point --manifest at the run's manifest"
            ) from None
        summary.warnings.append(f"manifest {manifest} ignored: not readable JSON ({exc})")
        return {"path": str(manifest), "data": None, "note": f"manifest {manifest.name} is not readable JSON"}
    summary.manifest = manifest
    return {"path": str(manifest), "data": data, "note": None}


def _thumbnail_chunk(paths: list[str], size: int) -> list[tuple[str | None, str | None]]:
    """(base64 JPEG, None) or (None, why not) per path; runs in a worker process or in-process."""
    out: list[tuple[str | None, str | None]] = []
    for path in paths:
        try:
            # base64 holds no character that could end the <script> element or the JSON string
            out.append((base64.b64encode(make_thumbnail(Path(path), size)).decode("ascii"), None))
        except ImageError as exc:
            out.append((None, str(exc)))
        except (OSError, ValueError) as exc:  # a path the OS cannot even look at (NUL byte, too long)
            out.append((None, f"cannot read: {exc}"))
    return out


_CHUNK = 16


def default_workers() -> int:
    """Thumbnail processes: one per core the process may use, up to 8; none (in-process) on one core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, 8)


def _thumbnails(paths: Iterable[str], size: int, workers: int) -> Iterator[tuple[str | None, str | None]]:
    """Thumbnails in input order. With workers, at most ``4 * workers`` chunks of 16 are in flight: bounded memory."""
    chunks = _chunks(paths)
    if workers <= 0:
        for chunk in chunks:
            yield from _thumbnail_chunk(chunk, size)
        return
    from concurrent.futures import Future, ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        window: deque[Future[list[tuple[str | None, str | None]]]] = deque()
        for chunk in chunks:
            window.append(pool.submit(_thumbnail_chunk, chunk, size))
            if len(window) >= 4 * workers:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()


def _chunks(paths: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_report(
    results: Path,
    output: Path,
    *,
    manifest: Path | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    results_format: ResultsFormat | None = None,
    base_dir: Path | None = None,
    title: str | None = None,
    workers: int | None = None,
) -> ReportSummary:
    """Write the HTML report of ``results`` to ``output``.

    Thumbnails are made in ``workers`` processes (default :func:`default_workers`; 0: in this
    process) and streamed to the file in input order, a bounded number in memory at a time.
    The file appears complete or not at all (written as ``OUTPUT.part``, then renamed).
    """
    if thumbnail_size < 16 or thumbnail_size > 1024:
        raise UsageError(f"--thumbnail-size {thumbnail_size} is out of range; use 16 to 1024 (default 160)")
    summary = ReportSummary(output=output)
    entries = [_entry(record) for record in read_records(results, results_format)]
    manifest_data = _read_manifest(manifest, results, summary)
    head, middle, tail = _template()
    page_title = title or f"imgclassify report: {csv_text(results.name)}"
    counts: Counter[tuple[int | None, str | None]] = Counter()
    shown = []
    for entry in entries:
        entry["thumb"] = None
        if _failed(entry):
            summary.failed += 1
            continue
        summary.classified += 1
        counts[(entry["class_id"], entry["class_name"])] += 1
        shown.append(entry)
    summary.records = len(entries)
    summary.classes = [(cid, name, n) for (cid, name), n in counts.most_common()]
    if workers is None:
        workers = default_workers() if len(shown) >= 4 * _CHUNK else 0
    with replaced_atomically(output, temp_suffix=".part") as tmp, open(tmp, "w", encoding="utf-8") as stream:
        stream.write(head.replace(_TITLE_MARK, html.escape(page_title)))
        stream.write("[")
        if thumbnails:
            paths = (str(_resolve(entry["path"], results, base_dir)) for entry in shown)
            for entry, (thumb, error) in zip(shown, _thumbnails(paths, thumbnail_size, workers), strict=True):
                if thumb is None:
                    entry["thumb_error"] = error
                    summary.placeholders += 1
                    continue
                stream.write(("," if summary.thumbnails else "") + '"' + thumb + '"')
                entry["thumb"] = summary.thumbnails
                summary.thumbnails += 1
        stream.write("]")
        stream.write(middle)
        data = {
            "title": page_title,
            "results": csv_text(str(results)),
            "thumbnails": thumbnails,
            "thumbnail_size": thumbnail_size,
            "records": entries,
            "counts": {"records": summary.records, "classified": summary.classified, "failed": summary.failed},
            "classes": summary.classes,
            "manifest": manifest_data,
        }
        stream.write(script_json(data))
        stream.write(tail)
    summary.bytes = output.stat().st_size
    return summary
