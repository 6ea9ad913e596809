"""``imgclassify report``: one self-contained HTML page from a results file and its manifest.

The page holds everything (no network, no CDN): the records as one JSON blob, the thumbnails
as base64 JPEGs in a second JSON array, and the template's CSS and JavaScript. Thumbnails are
made one at a time with the project's decoder (:func:`imgclassify.decode.imaging.open_image`, EXIF
orientation applied) and written straight to the output file, so memory stays bounded
whatever the number of images. The page builds cards only for the page on screen.

Everything from the data is embedded as JSON inside ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped, and rendered by the page with ``textContent``, never as HTML.

The results, the manifest and the output can be objects (``s3://``, ``gs://``, ``az://``): the
results and manifest are downloaded to a temporary folder (streamed to disk), the page is written
there and put in place when complete (:mod:`imgclassify.system.staging`). Records whose path is a
URL get their thumbnail from that object or ``http(s)`` URL, read one at a time.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Any

from imgclassify.decode.imaging import DecodeOptions, open_image
from imgclassify.errors import ImageError, ImgclassifyError, UsageError
from imgclassify.results.formats import OutputFormat, csv_text
from imgclassify.results.formats import ResultsFormatError as ResultsFormatError
from imgclassify.results.formats import ResultsNotFoundError as ResultsNotFoundError
from imgclassify.results.formats import detect_format as detect_format
from imgclassify.results.formats import read_records as read_records
from imgclassify.system.fs import replaced_atomically
from imgclassify.system.staging import object_name, staged_upload, temporary_folder
from imgclassify.system.storage import Storage, is_http, is_url


class ManifestError(UsageError):
    """``--manifest FILE`` does not exist or is not JSON."""


# The readers (``read_records``), their errors and ``detect_format`` live with the formats' table,
# imported above for the callers of this module; ResultsFormat is the one format enum under its old
# name here (``report`` reads the readable formats).
ResultsFormat = OutputFormat


DEFAULT_THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 75
TEMPLATE = "report.html"
_THUMBS_MARK = "__IMGCLASSIFY_THUMBS__"
_DATA_MARK = "__IMGCLASSIFY_DATA__"
_TITLE_MARK = "__IMGCLASSIFY_TITLE__"


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


def _resolve(path: str, results_dir: Path | None, base_dir: Path | None) -> str:
    """Where a record's image is: a URL as recorded; a relative path from ``base_dir``, else from the
    current folder, then from the results file's folder (``results_dir``; None for results downloaded)."""
    if is_url(path):
        return path
    candidate = Path(path)
    if candidate.is_absolute():
        return str(candidate)
    bases = [base_dir] if base_dir is not None else [Path.cwd(), *([results_dir] if results_dir is not None else [])]
    for base in bases:
        if (base / candidate).exists():
            return str(base / candidate)
    return str(bases[0] / candidate)


def make_thumbnail(path: Path | IO[bytes], size: int, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A JPEG at most ``size`` px on its longer side, decoded as ``predict`` decodes (EXIF orientation applied).

    Big JPEGs decode at reduced scale (libjpeg's DCT scaling). ``path``: a file, or a binary stream
    of one. Raises ImageError for any file that cannot be read or decoded.
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

    #: the page written: a path, or a URL
    output: Path | str
    records: int = 0
    classified: int = 0
    failed: int = 0
    #: (class_id, class_name, count), most frequent first
    classes: list[tuple[int | None, str | None, int]] = field(default_factory=list)
    thumbnails: int = 0
    #: thumbnails replaced by a placeholder (file gone, not decodable)
    placeholders: int = 0
    #: the manifest shown: a path, or the URL it was downloaded from
    manifest: Path | str | None = None
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


def _read_manifest(
    manifest: Path | None, results: Path, summary: ReportSummary, shown: Mapping[Path, str] | None = None
) -> dict[str, Any]:
    """The manifest section's data: ``{"path": ..., "data": ...}``, or a note why there is none.

    ``shown``: the URLs that downloaded copies were fetched from, shown in their place."""
    if manifest is not None and not manifest.is_file():
        raise ManifestError(
            f"manifest {manifest} not found; leave out --manifest to use {results.name}.manifest.json beside the results"
        )
    explicit = manifest is not None
    manifest = manifest or default_manifest(results)
    if manifest is None:
        return {"path": None, "data": None, "note": f"no manifest ({results.name}.manifest.json not found)"}
    shown = shown or {}
    label = shown.get(manifest, str(manifest))
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if explicit:
            raise ManifestError(
                f"manifest {label} is not readable JSON ({exc}); point --manifest at the run's manifest"
            ) from None
        summary.warnings.append(f"manifest {label} ignored: not readable JSON ({exc})")
        return {"path": label, "data": None, "note": f"manifest {manifest.name} is not readable JSON"}
    summary.manifest = shown.get(manifest, manifest)
    return {"path": label, "data": data, "note": None}


def _thumbnail_chunk(
    paths: list[str], size: int, storage: Storage | None = None
) -> list[tuple[str | None, str | None]]:
    """(base64 JPEG, None) or (None, why not) per path; runs in a worker process or in-process.
    A URL is read with ``storage`` (one object in memory at a time, as ``predict`` reads it)."""
    out: list[tuple[str | None, str | None]] = []
    for path in paths:
        try:
            if is_url(path):
                storage = storage if storage is not None else Storage()
                source: Path | IO[bytes] = io.BytesIO(storage.read(path))
            else:
                source = Path(path)
            # base64 holds no character that could end the <script> element or the JSON string
            out.append((base64.b64encode(make_thumbnail(source, size)).decode("ascii"), None))
        except ImgclassifyError as exc:  # ImageError; for a URL also a missing extra or a bad option
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


def _thumbnails(
    paths: Iterable[str], size: int, workers: int, storage: Storage | None = None
) -> Iterator[tuple[str | None, str | None]]:
    """Thumbnails in input order. With workers, at most ``4 * workers`` chunks of 16 are in flight: bounded memory."""
    chunks = _chunks(paths)
    if workers <= 0:
        for chunk in chunks:
            yield from _thumbnail_chunk(chunk, size, storage)
        return
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from imgclassify.system.parallel import ordered_map

    with ProcessPoolExecutor(workers) as pool:
        work = partial(_thumbnail_chunk, size=size, storage=storage)  # a Storage pickles without its filesystems
        made = ordered_map(work, chunks, executor=pool, window=4 * workers)
        try:
            for thumbs in made:
                yield from thumbs
        finally:
            made.close()  # cancels the chunks not started, so the pool's shutdown waits for no more


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
    results: Path | str,
    output: Path | str,
    *,
    manifest: Path | str | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    results_format: OutputFormat | None = None,
    base_dir: Path | None = None,
    title: str | None = None,
    workers: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ReportSummary:
    """Write the HTML report of ``results`` to ``output``.

    Thumbnails are made in ``workers`` processes (default :func:`default_workers`; 0: in this
    process) and streamed to the file in input order, a bounded number in memory at a time.
    The file appears complete or not at all (written as ``OUTPUT.part``, then renamed).

    ``results``, ``manifest`` and ``output`` may be object URLs given as strings (``s3://b/run.parquet``;
    a :class:`~pathlib.Path` is always local): the results (with the manifest beside them, unless
    ``manifest`` is given) are downloaded to a temporary folder first, and an output URL is written
    there and then uploaded. ``storage_options``: keyword arguments for the fsspec filesystems
    (``--storage-option``), also used to read the images of records whose path is a URL.
    """
    if thumbnail_size < 16 or thumbnail_size > 1024:
        raise UsageError(f"--thumbnail-size {thumbnail_size} is out of range; use 16 to 1024 (default 160)")
    storage = Storage(storage_options)
    labels: dict[Path, str] = {}  # downloaded copy -> the URL it came from
    with contextlib.ExitStack() as stack:
        if isinstance(output, str) and is_url(output):  # checked first: a bad URL costs no download
            local_output = stack.enter_context(staged_upload(storage, output, option="--output"))
        else:
            local_output = Path(output)
            if local_output.is_dir():
                raise UsageError(f"--output {output} is a directory: give a file name")
        folder = stack.enter_context(temporary_folder("imgclassify-report-"))
        results_dir: Path | None = None
        if isinstance(results, str) and is_url(results):
            local_results = _download_results(results, storage, folder, find_manifest=manifest is None, labels=labels)
        else:
            local_results = Path(results)
            results_dir = local_results.parent
        local_manifest = Path(manifest) if manifest is not None else None
        if isinstance(manifest, str) and is_url(manifest):
            local_manifest = _download_manifest(manifest, storage, folder / "manifest", local_results.name)
            labels[local_manifest] = manifest
        try:
            summary = _write_report(
                local_results, local_output, manifest=local_manifest, thumbnails=thumbnails,
                thumbnail_size=thumbnail_size, results_format=results_format, base_dir=base_dir, title=title,
                workers=workers, storage=storage, results_dir=results_dir, labels=labels,
            )  # fmt: skip
        except ResultsFormatError as exc:  # named as given, not as the downloaded copy
            text = str(exc)
            for local, url in labels.items():
                text = text.replace(str(local), url)
            raise ResultsFormatError(text) from None
    summary.output = output
    return summary


def _download_results(
    url: str, storage: Storage, folder: Path, *, find_manifest: bool, labels: dict[Path, str]
) -> Path:
    """The results object at ``url`` downloaded into ``folder`` under its own name, with the manifest
    beside it when ``find_manifest`` (``NAME.manifest.json``, else ``STEM.manifest.json``, as
    :func:`default_manifest` looks beside a local file); each copy recorded in ``labels``."""
    if is_http(url):
        raise UsageError(f"report: RESULTS {url}: read a file or object storage (s3://, gs://, az://), not http(s)")
    local = folder / object_name(url, "report: RESULTS")
    if not storage.download(url, local):
        raise ResultsNotFoundError(
            f"results file {url} not found (no such object); pass the object a run wrote with "
            "`imgclassify predict ... -o URL` (check the bucket and key)"
        )
    labels[local] = url
    if find_manifest:
        base = url[: len(url) - len(local.name)]
        for name in dict.fromkeys((local.name + ".manifest.json", PurePosixPath(local.name).stem + ".manifest.json")):
            if storage.download(base + name, folder / name):
                labels[folder / name] = base + name
                break
    return local


def _download_manifest(url: str, storage: Storage, folder: Path, results_name: str) -> Path:
    """``--manifest URL`` downloaded into ``folder`` (a new one); a ManifestError when there is no such object."""
    if is_http(url):
        raise UsageError(f"--manifest {url}: read a file or object storage (s3://, gs://, az://), not http(s)")
    folder.mkdir()
    local = folder / object_name(url, "--manifest")
    if not storage.download(url, local):
        raise ManifestError(
            f"manifest {url} not found; leave out --manifest to use {results_name}.manifest.json beside the results"
        )
    return local


def _write_report(
    results: Path,
    output: Path,
    *,
    manifest: Path | None,
    thumbnails: bool,
    thumbnail_size: int,
    results_format: OutputFormat | None,
    base_dir: Path | None,
    title: str | None,
    workers: int | None,
    storage: Storage,
    results_dir: Path | None,
    labels: Mapping[Path, str],
) -> ReportSummary:
    """:func:`write_report` with every file local (``labels``: the URLs of the downloaded ones, shown instead)."""
    summary = ReportSummary(output=output)
    entries = [_entry(record) for record in read_records(results, results_format)]
    manifest_data = _read_manifest(manifest, results, summary, labels)
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
            paths = (_resolve(entry["path"], results_dir, base_dir) for entry in shown)
            made = _thumbnails(paths, thumbnail_size, workers, storage)
            for entry, (thumb, error) in zip(shown, made, strict=True):
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
            "results": csv_text(labels.get(results, str(results))),
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
