"""``imgclassify merge``: join the outputs of ``predict --shard 1/N`` ... ``N/N`` into one.

Each shard's manifest (``SHARD.manifest.json``) is checked first: every shard of one split
(the same N, shards 1..N each exactly once), every one complete, all from one run (the same
model, weights and labels sha256, preprocessing, precision, backend and top-k, as ``--resume``
compares them, and the same inputs and count of inputs found before sharding), and each file
holding as many records as its manifest counts. Then the records are written to one output in
a deterministic order: by path, each path component compared in natural order (``img2`` before
``img10``, case-insensitive, ties by the exact path), which is the order a single run gives
for one directory input. When every shard is already in that order (the usual case) the shards
are merged as streams, one record per shard in memory; otherwise they are sorted in memory.
A path found in two shards is refused. The output is written to ``OUTPUT.part`` and renamed
when complete, then the merged manifest is written beside it.

Shards and the output can be objects (``s3://``, ``gs://``, ``az://``; a shard glob such as
``s3://b/run/out.*.jsonl`` is listed in natural order, manifests left out): each shard's
manifest is downloaded and checked first, then the shards themselves, streamed to a temporary
folder (never read into memory whole); an output URL is written there and put in place when
complete, then its manifest beside it (:mod:`imgclassify.system.staging`).
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclassify.errors import UsageError
from imgclassify.results.formats import OutputFormat, detect_format, format_for_suffix, make_writer, read_records
from imgclassify.results.manifest import (
    MANIFEST_SUFFIX,
    Counts,
    Manifest,
    Provenance,
    RunInfo,
    command_line,
    manifest_path_for,
    utc_now,
)
from imgclassify.results.records import Prediction
from imgclassify.run.inputs import natural_key
from imgclassify.run.shards import Shard
from imgclassify.system.fs import replaced_atomically
from imgclassify.system.staging import object_exists, object_name, staged_upload, temporary_folder
from imgclassify.system.storage import GLOB_CHARS, Storage, is_http, is_url

_WRITE_BATCH = 256
_SEPARATORS = re.compile(r"[/\\]" if os.sep == "\\" else "/")
_NOT_COMPLETE = {
    "running": "still running, or its process was killed (status running)",
    "interrupted": "interrupted (status interrupted)",
    "stopped": "stopped by --max-failures (status stopped)",
    "failed": "failed (status failed)",
}


class MergeError(UsageError):
    """The shards cannot be merged: one missing, duplicated, incomplete or from another run."""


def merge_key(path: str) -> tuple[tuple[tuple[tuple[int, int | str], ...], ...], str]:
    """The merged order: path components in natural order, ties broken by the exact path."""
    return tuple(natural_key(part) for part in _SEPARATORS.split(path)), path


@dataclass
class ShardOutput:
    """One shard's output file and its manifest (for a shard in object storage: their downloaded copies)."""

    path: Path
    manifest_path: Path
    manifest: Manifest
    shard: Shard
    #: None until the file is there to look at (a shard in object storage, before its download)
    fmt: OutputFormat | None
    records: int = 0
    in_order: bool = True
    #: the shard's URL when it is in object storage (``path`` is then where it is downloaded to)
    url: str | None = None

    def count(self, key: str) -> Any:
        counts = self.manifest.counts
        return getattr(counts, key) if counts is not None else None

    @property
    def shown(self) -> str:
        """The shard as given: its URL, or its path."""
        return self.url if self.url is not None else str(self.path)

    @property
    def manifest_shown(self) -> str:
        return self.url + MANIFEST_SUFFIX if self.url is not None else str(self.manifest_path)

    def name(self) -> str:
        return f"{self.shown} (shard {self.shard})"


@dataclass
class MergeSummary:
    #: the merged output and its manifest: paths, or URLs
    output: Path | str
    manifest: Path | str
    shards: int
    records: int = 0
    classified: int = 0
    failed: int = 0
    sorted_in_memory: bool = False
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"merged {self.shards} shards into {self.output}: {self.records} records ({self.classified} classified, "
            f"{self.failed} failed), manifest {self.manifest}"
        )


def output_format_for(output: Path | str) -> OutputFormat:
    """The format ``output``'s suffix names (any that ``merge`` reads, so its output can be merged again)."""
    fmt = format_for_suffix(Path(output.rsplit("/", 1)[-1]) if isinstance(output, str) else output)
    if fmt is None or not fmt.record_format.readable:
        readable = [f.record_format.suffixes[0] for f in OutputFormat if f.record_format.readable]
        names = ", ".join(readable[:-1]) + " or " + readable[-1]
        raise UsageError(f"merge: cannot tell the format of {output}; name it {names}")
    fmt.record_format.require()
    return fmt


def _not_found(shown: str) -> MergeError:
    if is_url(shown):
        return MergeError(
            f"shard output {shown} not found (no such object); pass the objects written by "
            "`imgclassify predict --shard K/N -o URL`, each with its manifest beside it (check the bucket and key)"
        )
    return MergeError(
        f"shard output {shown} not found; pass the files written by `imgclassify predict --shard K/N -o FILE`"
    )


def _no_manifest(shown: str, manifest_name: str) -> MergeError:
    return MergeError(
        f"{shown} has no manifest ({manifest_name} beside it): merge checks each shard's manifest, "
        "so keep it next to the output the shard's run wrote"
    )


def _shard_of(path: Path, manifest: Manifest, shown: str) -> Shard:
    shard = Shard.from_manifest(manifest.run.shard)
    if shard is None:
        raise MergeError(
            f"{shown} was not written by a run with --shard (its manifest has no run.shard): nothing to merge"
        )
    return shard


def load_shard(path: Path) -> ShardOutput:
    """A shard's output and manifest, or a MergeError naming what is wrong."""
    if not path.is_file():
        raise _not_found(str(path))
    manifest_path = manifest_path_for(path)
    manifest = Manifest.read(manifest_path)
    if manifest is None:
        raise _no_manifest(str(path), manifest_path.name)
    shard = _shard_of(path, manifest, str(path))
    return ShardOutput(path, manifest_path, manifest, shard, detect_format(path))


def fetch_shard_manifest(url: str, storage: Storage, folder: Path) -> ShardOutput:
    """A shard in object storage with its manifest downloaded into ``folder`` (a new one) and read;
    its records are downloaded later (:func:`fetch_shard_records`), once every manifest is checked."""
    name = object_name(url, "merge: SHARD")
    if not object_exists(storage, url):
        raise _not_found(url)
    folder.mkdir(parents=True)
    path = folder / name
    manifest_path = manifest_path_for(path)
    if not storage.download(url + MANIFEST_SUFFIX, manifest_path):
        raise _no_manifest(url, manifest_path.name)
    try:
        manifest = Manifest.read(manifest_path)
    except UsageError as exc:  # named as given, not as the downloaded copy
        raise MergeError(str(exc).replace(str(manifest_path), url + MANIFEST_SUFFIX)) from None
    assert manifest is not None
    return ShardOutput(path, manifest_path, manifest, _shard_of(path, manifest, url), None, url=url)


def fetch_shard_records(item: ShardOutput, storage: Storage) -> None:
    """Download a shard in object storage to its ``path`` (streamed to disk) and tell its format."""
    assert item.url is not None
    if not storage.download(item.url, item.path):
        raise _not_found(item.url)
    try:
        item.fmt = detect_format(item.path)
    except UsageError as exc:
        raise MergeError(str(exc).replace(str(item.path), item.url)) from None


def shard_sources(given: Sequence[Path | str], storage: Storage) -> list[Path | str]:
    """The shards named: local paths as they are, object URLs as strings, and each URL glob
    (``s3://b/run/out.*.jsonl``) listed in natural order, prefixes and manifests left out."""
    sources: list[Path | str] = []
    for item in given:
        if not (isinstance(item, str) and is_url(item)):
            sources.append(Path(item))
            continue
        if is_http(item):
            raise UsageError(
                f"merge: {item}: shards are read from files or object storage (s3://, gs://, az://), not http(s)"
            )
        if not GLOB_CHARS.search(item):
            sources.append(item)
            continue
        matches: list[str] = [
            url for url, is_prefix in storage.glob(item) if not is_prefix and not url.endswith(MANIFEST_SUFFIX)
        ]
        if not matches:
            raise MergeError(
                f"no shard output matches {item}; pass the objects written by `imgclassify predict --shard K/N -o URL`"
            )
        matches.sort(key=merge_key)
        sources.extend(matches)
    return sources


def differences(reference: ShardOutput, other: ShardOutput) -> list[str]:
    """How ``other``'s run differs from ``reference``'s, beyond being another shard."""
    found = reference.manifest.differences(other.manifest, compare_shard=False)
    for label, before, after in (
        ("inputs", reference.manifest.run.inputs, other.manifest.run.inputs),
        ("found before sharding", reference.count("found_before_sharding"), other.count("found_before_sharding")),
    ):
        if before != after:
            found.append(f"{label}: {before} -> {after}")
    return found


def check_shards(shards: Sequence[ShardOutput]) -> list[ShardOutput]:
    """The shards ordered 1..N after every check that needs only the manifests."""
    count = shards[0].shard.count
    for other in shards[1:]:
        if other.shard.count != count:
            raise MergeError(
                f"{shards[0].name()} and {other.name()} are from different splits (N = {count} and "
                f"{other.shard.count}); merge the N shards of one split"
            )
    by_index: dict[int, ShardOutput] = {}
    for item in shards:
        if item.shard.index in by_index:
            first = by_index[item.shard.index]
            raise MergeError(f"shard {item.shard} given twice: {first.shown} and {item.shown}; pass each shard once")
        by_index[item.shard.index] = item
    ordered = [by_index[i] for i in sorted(by_index)]
    reference = ordered[0]
    for other in ordered[1:]:
        found = differences(reference, other)
        if found:
            raise MergeError(
                f"{other.name()} is from another run than {reference.name()} ({'; '.join(found)}); "
                "merge only shards of one run: the same model, weights, labels, options and inputs"
            )
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        given = ", ".join(str(i) for i in sorted(by_index))
        raise MergeError(
            f"shard {names} missing (given: {given} of {count}); pass the output of every `--shard K/{count}` run"
        )
    for item in ordered:
        status = item.manifest.status
        if status != "complete":
            why = _NOT_COMPLETE.get(str(status), f"not complete (status {status})")
            raise MergeError(
                f"{item.name()} is {why}; finish it with its command plus --resume "
                f"(see {item.manifest_shown}), then merge"
            )
    return ordered


def _scan(item: ShardOutput) -> None:
    """Count the shard's records and see whether they are in merged order (one pass, one record in memory)."""
    previous = None
    for record in read_records(item.path, item.fmt):
        key = merge_key(record["path"])
        if previous is not None and key < previous:
            item.in_order = False
        previous = key
        item.records += 1
    expected = item.count("inputs")
    if item.records != expected:
        raise MergeError(
            f"{item.name()} holds {item.records} records but its manifest counts {expected} inputs: the file "
            "changed after its run, or is not that run's output"
        )


def _keyed(item: ShardOutput) -> Iterator[tuple[tuple[Any, str], ShardOutput, dict[str, Any]]]:
    for record in read_records(item.path, item.fmt):
        yield merge_key(record["path"]), item, record


def _ordered_records(
    ordered: Sequence[ShardOutput], summary: MergeSummary
) -> Iterable[tuple[tuple[Any, str], ShardOutput, dict[str, Any]]]:
    streams = [_keyed(item) for item in ordered]
    if all(item.in_order for item in ordered):
        return heapq.merge(*streams, key=lambda entry: entry[0])
    summary.sorted_in_memory = True
    out_of_order = ", ".join(item.shown for item in ordered if not item.in_order)
    summary.warnings.append(
        f"{out_of_order} not in path order (inputs given in another order, or from stdin): sorted in memory"
    )
    everything = [entry for stream in streams for entry in stream]
    everything.sort(key=lambda entry: entry[0])
    return everything


def merge_shards(
    output: Path | str,
    shard_paths: Sequence[Path | str],
    *,
    command: list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> MergeSummary:
    """Check the shards' manifests, write their records to ``output`` in merged order, and its manifest.

    ``output`` and each shard may be an object URL, given as a string (``s3://b/run/all.parquet``; a
    shard URL may be a glob); a :class:`~pathlib.Path` is always local. ``storage_options``: keyword
    arguments for the fsspec filesystems (``--storage-option``; only their keys reach the manifest).
    """
    from imgclassify.run.runner import check_writable

    storage = Storage(storage_options)
    fmt = output_format_for(output)
    output_url = output if isinstance(output, str) and is_url(output) else None
    local_output = Path(output) if output_url is None else None
    if local_output is not None:
        check_writable(local_output, "merge: OUTPUT")
    else:
        assert output_url is not None
        object_name(output_url, "merge: OUTPUT")  # not http(s), not a prefix
        storage.filesystem(output_url)  # a missing extra fails before any download
    if not shard_paths:
        raise UsageError("merge: give the shard outputs after OUTPUT (imgclassify merge all.jsonl out.*.jsonl)")
    sources = shard_sources(shard_paths, storage)
    target = local_output.resolve() if local_output is not None else None
    for source in sources:
        if source == output_url or (isinstance(source, Path) and source.resolve() == target):
            raise UsageError(f"merge: OUTPUT {output} is also one of the shards; write the merged output to a new file")
    with temporary_folder("imgclassify-merge-") as scratch:  # the shards in object storage, downloaded
        shards = [
            fetch_shard_manifest(source, storage, scratch / f"shard-{i}")
            if isinstance(source, str)
            else load_shard(source)
            for i, source in enumerate(sources)
        ]
        ordered = check_shards(shards)  # every manifest checked before any shard's records are fetched
        for item in ordered:
            if item.url is not None:
                fetch_shard_records(item, storage)
            _scan(item)
        total = ordered[0].count("found_before_sharding")
        records = sum(item.records for item in ordered)
        if isinstance(total, int) and records != total:
            raise MergeError(
                f"the {len(ordered)} shards hold {records} records, but each run found {total} inputs before sharding: "
                "the shards did not split the same list of paths (were they given the inputs spelled the same way?)"
            )
        option_keys = sorted(storage_options or {})
        if local_output is not None:
            return _write_merged(ordered, local_output, local_output, fmt, command, option_keys)
        assert output_url is not None
        with staged_upload(storage, output_url, option="merge: OUTPUT", companions=(MANIFEST_SUFFIX,)) as staged:
            return _write_merged(ordered, staged, output_url, fmt, command, option_keys)


def _write_merged(
    ordered: Sequence[ShardOutput],
    output: Path,
    shown: Path | str,
    fmt: OutputFormat,
    command: list[str] | None,
    option_keys: list[str],
) -> MergeSummary:
    """The checked shards' records to ``output`` in merged order, then its manifest beside it
    (``shown``: the output as given, a URL when ``output`` is its local stage)."""
    manifest_path = manifest_path_for(output)
    shown_manifest: Path | str = manifest_path if isinstance(shown, Path) else shown + MANIFEST_SUFFIX
    summary = MergeSummary(output=shown, manifest=shown_manifest, shards=len(ordered))

    def manifest() -> Manifest:
        return merged_manifest(ordered, shown, fmt, summary, command or command_line(), option_keys=option_keys)

    reference = ordered[0]
    top_k = int(reference.manifest.run.top_k or 1)
    with (
        replaced_atomically(output, temp_suffix=".part") as part,
        open(part, "w", encoding="utf-8", newline="") as stream,
    ):
        writer = make_writer(
            fmt, stream, top_k=top_k, model_name=str(_model_name(reference.manifest)),
            manifest=lambda: manifest().to_dict(),
        )  # fmt: skip
        previous: tuple[str, ShardOutput] | None = None
        batch: list[Prediction] = []
        for _key, item, record in _ordered_records(ordered, summary):
            path = record["path"]
            if previous is not None and previous[0] == path:
                raise MergeError(
                    f"{path!r} is in {previous[1].name()} and in {item.name()}: each input belongs to one shard; "
                    "were the shards run on different lists of inputs?"
                )
            previous = (path, item)
            prediction = Prediction.from_dict(record)
            batch.append(prediction)
            summary.records += 1
            if prediction.error is None:
                summary.classified += 1
            else:
                summary.failed += 1
            if len(batch) == _WRITE_BATCH:
                writer.write(batch)
                batch = []
        writer.write(batch)
        writer.close()
    manifest().write(manifest_path)
    return summary


def _model_name(manifest: Manifest) -> str | None:
    return manifest.provenance.model.name if manifest.provenance is not None else None


def merged_manifest(
    ordered: Sequence[ShardOutput],
    output: Path | str,
    fmt: OutputFormat,
    summary: MergeSummary,
    command: list[str],
    *,
    option_keys: Sequence[str] = (),
) -> Manifest:
    """The merged output's manifest: the shards' common provenance, the shards themselves, summed counts."""
    from imgclassify import __version__

    reference = ordered[0].manifest
    devices = sorted({str(item.manifest.provenance.device if item.manifest.provenance else None) for item in ordered})
    started = sorted(str(item.manifest.started_at) for item in ordered)
    provenance = dataclasses.replace(reference.provenance or Provenance(), device=", ".join(devices))
    return Manifest(
        imgclassify=__version__,
        status="complete",
        command=command,
        started_at=started[0],
        finished_at=utc_now(),
        engine={
            "name": "merged",
            "shards": [
                {
                    "shard": item.shard.describe(),
                    "output": item.shown,
                    "manifest": item.manifest_shown,
                    "started_at": item.manifest.started_at,
                    "finished_at": item.manifest.finished_at,
                    "engine": item.manifest.engine,
                    "host": item.manifest.host,
                }
                for item in ordered
            ],
        },
        run=RunInfo(
            merged_from=len(ordered),
            top_k=reference.run.top_k,
            format=fmt.value,
            output=str(output),
            inputs=reference.run.inputs,
            shard=None,
            # the keys only: the values may be secrets
            extra={"storage_options": sorted(option_keys)} if option_keys else {},
        ),
        provenance=provenance,
        versions=reference.versions,
        counts=Counts(
            inputs=summary.records,
            classified=summary.classified,
            failed=summary.failed,
            # every shard lists the same folders, so each counts the same non-image files
            skipped_non_images=int(ordered[0].count("skipped_non_images") or 0),
            already_done=sum(int(item.count("already_done") or 0) for item in ordered),
        ),
    )
