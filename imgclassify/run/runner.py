"""A whole ``predict`` run: validate, expand inputs, plan and load the model, stream batches to a
writer, keep the run manifest, summarize.

The CLI builds a :class:`PredictOptions` and calls :func:`run_predict`; nothing here knows
about Typer. Every option is checked before the model loads. Diagnostics go to the
``imgclassify`` logger and the ``stderr`` stream given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from imgclassify.errors import NoImagesError, UsageError
from imgclassify.models.plan import ModelPlan, plan_model
from imgclassify.options import ModelOptions
from imgclassify.results.formats import SUFFIX_FORMATS, ManifestSource, OutputFormat, make_writer
from imgclassify.results.manifest import (
    Counts,
    Manifest,
    Provenance,
    Resumed,
    RunInfo,
    RunManifest,
    command_line,
    manifest_path_for,
)
from imgclassify.results.records import Prediction
from imgclassify.results.render import judge
from imgclassify.results.resume import check_appendable, recorded_paths, resume_key
from imgclassify.run.engines import Engine, EngineKind, create_engine
from imgclassify.run.inputs import ExpandedInputs, InputListing
from imgclassify.run.settings import RunSettings
from imgclassify.run.shards import Shard
from imgclassify.run.sorting import Sorter, SortOptions, validate_sort
from imgclassify.system.devices import Backend
from imgclassify.system.storage import Storage, is_url

log = logging.getLogger("imgclassify")

RESUMABLE = tuple(fmt for fmt in OutputFormat if fmt.record_format.appendable)


@dataclass
class PredictOptions:
    inputs: list[str]
    model: ModelOptions = field(default_factory=ModelOptions)
    #: images per forward pass; None: the default for the device the model runs on, resolved once
    #: the engine started (:func:`~imgclassify.decode.loading.default_batch_size`), as the manifest records it
    batch_size: int | None = None
    top_k: int = 1
    workers: int | None = None
    output_format: OutputFormat | None = None
    output: Path | None = None
    #: where to write the run manifest (default: beside --output as FILE.manifest.json; none for stdout)
    manifest: Path | None = None
    quiet: bool = False
    progress: bool | None = None  # None: when stderr is a terminal
    #: stop once more files than this failed: a count ("10") or a share of the inputs ("5%")
    max_failures: str | None = None
    #: skip inputs already recorded in ``output`` and append the rest (jsonl/csv)
    resume: bool = False
    #: the command line recorded in the manifest (default: this process's)
    command: list[str] | None = None
    #: tune threads for this process before loading the model (the CLI's entry point asks for it)
    tune_process: bool = False
    #: where the batches run (``--engine``) and that engine's own settings: its ``Settings``
    #: dataclass (``RayEngine.Settings(address=..., actors=...)``; None: its defaults)
    engine: EngineKind = EngineKind.LOCAL
    engine_settings: object | None = None
    #: ``--shard K/N``: keep only this share of the inputs (see :mod:`imgclassify.run.shards`)
    shard: Shard | None = None
    #: a record whose top-1 probability is below this says ``confident: false`` (``--threshold``)
    threshold: float | None = None
    #: ``--sort-into DIR`` with its mode and ``--dry-run`` (see :mod:`imgclassify.run.sorting`)
    sort: SortOptions | None = None
    #: ``--storage-option KEY=VALUE`` parsed (:func:`~imgclassify.system.storage.parse_storage_options`):
    #: keyword arguments for the fsspec filesystems URL inputs are read with; only the keys are recorded
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: ``--output`` as a URL (``s3://bucket/out.jsonl``): written to a local temporary, then put
    #: there with its manifest beside it (:mod:`imgclassify.run.remote_output`); the manifest records it
    output_url: str | None = None


@dataclass
class RunSummary:
    classified: int = 0
    failed: int = 0
    skipped_non_images: int = 0
    elapsed: float = 0.0
    model: str = ""
    already_done: int = 0
    inputs: int = 0
    #: the signal that stopped the run early (SIGINT, SIGTERM), if any
    signal: int | None = None
    stopped_for_failures: bool = False
    manifest: Path | None = None
    #: with ``--shard``: the inputs found before keeping this shard's share
    found_before_sharding: int | None = None
    #: ``--sort-into``: what the sorter did (None without it)
    sort: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return 1 if self.failed or self.stopped_for_failures else 0

    @property
    def status(self) -> str:
        if self.signal is not None:
            return "interrupted"
        return "stopped" if self.stopped_for_failures else "complete"

    def counts(self) -> Counts:
        return Counts(
            inputs=self.inputs,
            classified=self.classified,
            failed=self.failed,
            skipped_non_images=self.skipped_non_images,
            already_done=self.already_done,
            found_before_sharding=self.found_before_sharding,
        )

    def line(self) -> str:
        total = self.classified + self.failed
        rate = total / self.elapsed if self.elapsed > 0 else 0.0
        skipped = f", {counted(self.skipped_non_images, 'non-image file')} skipped" if self.skipped_non_images else ""
        resumed = f", {self.already_done} already in the output" if self.already_done else ""
        stopped = ""
        if self.signal is not None:
            stopped = f"; interrupted by {signal.Signals(self.signal).name}"
        elif self.stopped_for_failures:
            stopped = "; stopped early: too many failures (--max-failures)"
        shard = ""
        if self.found_before_sharding is not None:
            shard = f" (this shard's {self.inputs} of {self.found_before_sharding} inputs)"
        return (
            f"{self.classified} classified, {self.failed} failed{skipped}{resumed}{shard} in {self.elapsed:.1f}s "
            f"({rate:.1f} images/s, {self.model}){stopped}{_sort_line(self.sort)}"
        )


def _sort_line(sort: dict[str, Any] | None) -> str:
    if sort is None:
        return ""
    counts = sort["counts"]
    verb = "would sort" if sort["dry_run"] else "sorted"
    return (
        f"; {verb} {counts['sorted']} into {sort['into']} ({sort['mode']}), {counts['already_sorted']} already "
        f"sorted, {counts['failed']} could not be sorted"
    )


class _Terminated(BaseException):  # like KeyboardInterrupt: not caught by per-file error handling
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def failure_limit(spec: str | None, total: int) -> int | None:
    """``--max-failures``: "N" or "N%" of ``total`` -> the most failures allowed (None: no limit)."""
    if spec is None:
        return None
    text = spec.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return int(total * share / 100)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise UsageError(f"--max-failures takes a count or a percentage (10, 5%), got {spec!r}") from None


def choose_format(explicit: OutputFormat | None, output: Path | None, stdout: TextIO) -> OutputFormat:
    """Explicit format; else from the output file's suffix; else table on a terminal, JSONL otherwise."""
    if explicit is not None:
        return explicit
    if output is not None:
        fmt = SUFFIX_FORMATS.get(output.suffix.lower())
        if fmt is None:
            suffixes = ", ".join(SUFFIX_FORMATS)
            formats = ", ".join(f.value for f in OutputFormat)
            what = f"its suffix {output.suffix!r}" if output.suffix else "a name without a suffix"
            raise UsageError(
                f"--output {output}: {what} names no format; give --format ({formats}) "
                f"or a file name ending in one of {suffixes}"
            )
        return fmt
    return OutputFormat.TABLE if stdout.isatty() else OutputFormat.JSONL


def counted(n: int, noun: str) -> str:
    """``1 non-image file``, ``2 non-image files``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def nothing_found(found: ExpandedInputs | InputListing, inputs: list[str]) -> str:
    """Why the inputs gave no image: paths that do not exist, globs that match nothing, empty folders."""
    reasons = []
    if found.missing:
        names = ", ".join(found.missing[:3]) + (f" and {len(found.missing) - 3} more" if len(found.missing) > 3 else "")
        reasons.append(f"{names} {'does' if len(found.missing) == 1 else 'do'} not exist")
    if found.empty_globs:
        reasons.append(f"no file matches {', '.join(found.empty_globs[:3])}")
    if not reasons:
        skipped = (
            f" ({counted(found.skipped_non_images, 'non-image file')} skipped)" if found.skipped_non_images else ""
        )
        reasons.append(f"no image found in {', '.join(inputs[:3])}{skipped}")
    return "; ".join(reasons) + ": give image files, directories or quoted globs"


def check_writable(path: Path, option: str) -> None:
    """``path`` can be created or overwritten: its folder exists and it is not a folder itself."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: permission denied; choose a writable location")


def validate(options: PredictOptions, fmt: OutputFormat) -> None:
    """Every check that needs neither the inputs nor the model: costs no model load."""
    RunSettings.check(
        batch_size=options.batch_size, top_k=options.top_k, threshold=options.threshold, workers=options.workers
    )
    failure_limit(options.max_failures, 0)
    if options.resume:
        if options.output is None:
            raise UsageError("--resume needs --output FILE (the file to continue)")
        check_appendable(fmt)
    fmt.record_format.require()  # an extra the format needs (parquet: pyarrow)
    if options.output is not None:
        check_writable(options.output, "--output")
    if options.manifest is not None:
        check_writable(options.manifest, "--manifest")
    if options.sort is not None:
        validate_sort(options.sort)


@contextlib.contextmanager
def _open_output(output: Path | None, stdout: TextIO, *, append: bool = False) -> Iterator[TextIO]:
    if output is None:
        yield stdout
        return
    try:
        stream = open(output, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def _check_resume(old: Manifest | None, new: Manifest, output: Path, manifest: Path) -> None:
    if old is None:
        if output.exists() and output.stat().st_size > 0:
            log.warning(
                "%s has no manifest (%s): it was written by an older imgclassify, so it cannot be "
                "checked that the same model and options wrote it; continuing",
                output, manifest.name,
            )  # fmt: skip
        return
    differences = old.differences(new)
    if differences:
        raise UsageError(
            f"--resume: {output} was written by a different run ({'; '.join(differences)}). "
            f"Either run again with that run's options (see {manifest}), or write to a new --output"
        )


def _run_info(options: PredictOptions, fmt: OutputFormat) -> RunInfo:
    return RunInfo(
        batch_size=options.batch_size,  # None until the engine's device resolves it (_Run.execute)
        top_k=options.top_k,
        workers=options.workers,
        format=fmt.value,
        output=options.output_url or (str(options.output) if options.output else None),
        resume=options.resume,
        max_failures=options.max_failures,
        shard=options.shard.describe() if options.shard else None,
        threshold=options.threshold,
        # what `imgclassify merge` checks: every shard hashed the same paths
        inputs=list(options.inputs) if options.shard is not None else None,
        # the keys only: the values may be secrets
        extra={"storage_options": sorted(options.storage_options)} if options.storage_options else {},
    )


def run_predict(
    options: PredictOptions, *, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> RunSummary:
    """Run a classification job as the CLI does. Returns the summary; raises ImgclassifyError on usage errors."""
    if options.output_url is not None and options.output is None:  # -o s3://...: a local run, then uploaded
        from imgclassify.run.remote_output import staged_output

        with staged_output(options, Storage(options.storage_options)) as staged:
            return run_predict(staged, stdin=stdin, stdout=stdout, stderr=stderr)
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    start = time.perf_counter()
    fmt = choose_format(options.output_format, options.output, stdout)
    validate(options, fmt)
    if fmt.record_format.binary and options.output is None and stdout.isatty():
        raise UsageError(f"--format {fmt.value} is binary, not for a terminal: give --output FILE or a pipe")

    storage = Storage(options.storage_options)
    listing = InputListing(options.inputs, stdin=stdin, storage=storage)  # streams: listed as classified
    if not listing.found_any():
        raise NoImagesError(nothing_found(listing, list(options.inputs)))
    _check_urls_supported(options, [*options.inputs, *listing.looked_ahead()])

    show_progress = (stderr.isatty() if options.progress is None else options.progress) and not options.quiet
    if options.model.device not in ("auto", "cpu"):  # a missing GPU fails before weights are looked for
        from imgclassify.system.devices import resolve_device

        resolve_device(options.model.device)
    plan = plan_model(options.model, progress=show_progress)
    if options.threshold is None and plan.default_threshold is not None:  # a fitted model's own
        options = dataclasses.replace(options, threshold=plan.default_threshold)
        log.info("--threshold %g: the fitted model's, from its cross-validation", plan.default_threshold)
    run = _Run(options, fmt, plan, listing, start, show_progress)
    run.storage = storage
    if options.resume:
        run.check_resume(Provenance.of(plan, plan.expected_label_set()))  # before paying for the model
    engine = create_engine(options.engine, plan, options.engine_settings, tune_process=options.tune_process)
    engine.start()
    try:
        return run.execute(engine, stdout, stderr)
    finally:
        engine.close()


def _check_urls_supported(options: PredictOptions, paths: list[str]) -> None:
    """What URL inputs do not work with yet, refused before the model loads (every engine reads URLs)."""
    url = next((path for path in paths if is_url(path)), None)
    if url is None:
        return
    if options.sort is not None:
        raise UsageError(f"--sort-into sorts local files only, not URLs such as {url}")


class _Run:
    """One run's state between planning and the summary."""

    def __init__(
        self,
        options: PredictOptions,
        fmt: OutputFormat,
        plan: ModelPlan,
        listing: InputListing,
        start: float,
        show_progress: bool,
    ) -> None:
        self.options, self.fmt, self.plan, self.listing = options, fmt, plan, listing
        self.start, self.show_progress = start, show_progress
        self.run_info = _run_info(options, fmt)
        output = options.output
        self.manifest_path = options.manifest or (manifest_path_for(output) if output else None)
        self.old_manifest: Manifest | None = None
        self.storage: Storage | None = None
        if options.resume:
            assert self.manifest_path is not None
            self.old_manifest = Manifest.read(self.manifest_path)

    def check_resume(self, provenance: Provenance) -> None:
        assert self.options.output is not None and self.manifest_path is not None
        new = Manifest("", "running", [], None, run=self.run_info, provenance=provenance)
        _check_resume(self.old_manifest, new, self.options.output, self.manifest_path)

    def execute(self, engine: Engine, stdout: TextIO, stderr: TextIO) -> RunSummary:
        options, fmt = self.options, self.fmt
        settings = RunSettings.resolve(  # once: the device and the class count are known now
            batch_size=options.batch_size, top_k=options.top_k, threshold=options.threshold,
            workers=options.workers, device=engine.device, num_classes=len(engine.label_set.labels),
            storage=self.storage,
        )  # fmt: skip
        self.run_info.batch_size = settings.batch_size
        resuming = options.resume and self.old_manifest is not None
        # provenance (the sha256 of the weights file) only when a manifest or --resume needs it
        provenance = None
        if self.manifest_path is not None or resuming:
            provenance = Provenance.of(self.plan, engine.label_set, device=engine.device)
        if resuming:
            assert provenance is not None
            self.check_resume(provenance)  # now with the labels of the loaded model too
        summary = RunSummary(model=self.plan.spec.name, manifest=self.manifest_path)
        done: set[str] | None = None
        header = True
        if options.resume:
            assert options.output is not None
            done, has_header = recorded_paths(options.output, fmt)
            header = not has_header
        chunks = _Chunks(self.listing, summary, options, fmt, done, max(128 * settings.batch_size, engine.min_chunk))

        manifest = None
        if self.manifest_path is not None:
            assert provenance is not None
            command = options.command or command_line()
            manifest = RunManifest.new(self.manifest_path, command=command, engine=engine.describe(), run=self.run_info)
            if self.old_manifest is not None:
                manifest.manifest.resumed = Resumed(self.old_manifest.started_at, summary.already_done)
            manifest.start(provenance, openvino=self.plan.options.backend is Backend.OPENVINO)
        status = "failed"
        sorter = records_out = None
        if options.sort is not None:
            sorter = Sorter(options.sort, plan_stream=stdout)  # a dry run's plan is data: stdout
            if options.sort.dry_run and options.output is None:
                records_out = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115  stdout holds the plan
        try:
            sink = _Sink(
                fmt, settings, summary, sorter=sorter, header=header, max_failures=options.max_failures,
                multi_label=self.plan.multi_label,
                manifest=None if manifest is None else self._embedded(manifest, summary, engine),
            )  # fmt: skip
            with _open_output(options.output, records_out or stdout, append=options.resume) as stream:
                sink.consume(chunks.batches(engine, settings), chunks.total, stream, stderr, self.show_progress)
            status = summary.status
        finally:
            summary.elapsed = time.perf_counter() - self.start
            for pattern in self.listing.empty_globs[chunks.globs_warned :]:
                log.warning("no file matches %s", pattern)
            if sorter is not None:
                sorter.close()
                summary.sort = sorter.describe()
                for path, reason in sorter.counts.failures:
                    log.warning("%s: not sorted: %s (left where it is)", path, reason)
                if manifest is not None:
                    manifest.manifest.sort = summary.sort
            if records_out is not None:
                records_out.close()
            if manifest is not None:
                if manifest.manifest.resumed is not None:  # counted as the listing went
                    manifest.manifest.resumed.already_done = summary.already_done
                manifest.finish(status, summary.counts(), elapsed_s=round(summary.elapsed, 3), engine=engine.describe())
        return summary

    def _embedded(self, manifest: RunManifest, summary: RunSummary, engine: Engine) -> ManifestSource:
        """The manifest as the run ends, for the formats that store it in the output (Parquet), asked for
        when the writer closes: the final status and counts (``finished_at``, ``elapsed_s``: that moment's)."""

        def finished() -> dict[str, Any]:
            elapsed = round(time.perf_counter() - self.start, 3)
            return manifest.finished(summary.status, summary.counts(), elapsed_s=elapsed, engine=engine.describe())

        return finished


class _Chunks:
    """The listing, filtered (``--shard``, ``--resume``), handed to the engine in chunks as it is
    listed: first ``first`` inputs (``128 x batch``, or the engine's ``min_chunk``: the first
    records come after one folder's listing, whatever the input count), each chunk twice the
    last, up to :data:`LARGEST_CHUNK`. Records are
    the same whatever the chunks; the engine's decoders drain at each boundary (one batch's wait
    per chunk). The summary's counts follow the listing as it goes."""

    #: inputs per chunk at most (paths held: a few MB)
    LARGEST_CHUNK = 65536

    def __init__(
        self,
        listing: InputListing,
        summary: RunSummary,
        options: PredictOptions,
        fmt: OutputFormat,
        done: set[str] | None,
        first: int,
    ) -> None:
        self.listing, self.summary, self.options, self.fmt, self.done = listing, summary, options, fmt, done
        self.first = first
        #: empty globs warned about while listing (the rest are at the end)
        self.globs_warned = 0

    def _paths(self) -> Iterator[str]:
        shard, done, summary, fmt = self.options.shard, self.done, self.summary, self.fmt
        for path in self.listing:
            self._follow()
            if shard is not None and not shard.contains(path):
                continue
            summary.inputs += 1
            if done is not None and resume_key(path, fmt) in done:
                summary.already_done += 1
                continue
            yield path
        self._follow()

    def _follow(self) -> None:
        listing, summary = self.listing, self.summary
        summary.skipped_non_images = listing.skipped_non_images
        if self.options.shard is not None:
            summary.found_before_sharding = listing.listed
        while self.globs_warned < len(listing.empty_globs):
            log.warning("no file matches %s", listing.empty_globs[self.globs_warned])
            self.globs_warned += 1

    def chunks(self) -> Iterator[list[str]]:
        size, chunk = self.first, []
        for path in self._paths():
            chunk.append(path)
            if len(chunk) >= size:
                yield chunk
                chunk, size = [], min(2 * size, max(self.LARGEST_CHUNK, self.first))
        if chunk:
            yield chunk

    def batches(self, engine: Engine, settings: RunSettings) -> Iterator[list[Prediction]]:
        for chunk in self.chunks():
            if self.options.sort is not None:
                _check_urls_supported(self.options, chunk)  # a URL on stdin, listed after the start
            yield from engine.batches(chunk, settings)

    def total(self) -> int | None:
        """The inputs still to classify, once the listing is complete (None before: the bar counts up)."""
        if not self.listing.complete:
            return None
        return self.summary.inputs - self.summary.already_done


@dataclass
class _Sink:
    """Where the engine's batches go: judged by the threshold, sorted, written, counted."""

    fmt: OutputFormat
    settings: RunSettings
    summary: RunSummary
    sorter: Sorter | None = None
    #: write the CSV header (False: continuing a file that has it)
    header: bool = True
    #: ``--max-failures``: a count, or a share of the inputs listed so far (the listing streams)
    max_failures: str | None = None
    #: a multi-label head: with a threshold, records list every class above it
    multi_label: bool = False
    #: the run's manifest, for the formats that store it in the output (asked for when the writer closes)
    manifest: ManifestSource | None = None

    def consume(
        self,
        batches: Iterator[list[Prediction]],
        total: Callable[[], int | None],
        stream: TextIO,
        stderr: TextIO,
        show_progress: bool,
    ) -> None:
        """Write the batches as they come; stops cleanly on ``--max-failures`` and SIGINT/SIGTERM.
        ``total``: the records to come, once known (the progress bar's end)."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        summary, threshold = self.summary, self.settings.threshold
        previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None

        def on_sigterm(signum: int, frame: object) -> None:
            raise _Terminated(signum)

        if previous is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
        try:
            with (
                tqdm(total=total(), unit="img", file=stderr, disable=not show_progress, dynamic_ncols=True) as bar,
                # a warning logged while the bar shows (an engine's, say) is written above it, not glued to it
                logging_redirect_tqdm([log]) if show_progress else contextlib.nullcontext(),
            ):
                writer = make_writer(
                    self.fmt, stream, top_k=self.settings.top_k, model_name=summary.model, header=self.header,
                    lists=self.settings.top_k > 1 or (self.multi_label and threshold is not None),
                    manifest=self.manifest,
                )  # fmt: skip
                try:
                    for batch in batches:
                        if threshold is not None:  # the engines render without one; judged here, once
                            batch = [judge(record, threshold) for record in batch]
                        with _bar_cleared(bar):  # what is written now starts on a line of its own
                            self._write(batch, writer)
                            if bar.total is None and (known := total()) is not None:
                                bar.total = known  # the listing is complete: the bar shows its end
                            bar.update(len(batch))
                        limit = failure_limit(self.max_failures, summary.inputs - summary.already_done)
                        if limit is not None and summary.failed > limit:
                            summary.stopped_for_failures = True
                            log.error(
                                "%d files failed, more than --max-failures %s: stopping",
                                summary.failed, self.max_failures,
                            )  # fmt: skip
                            break
                except KeyboardInterrupt:
                    summary.signal = signal.SIGINT
                except _Terminated as exc:
                    summary.signal = exc.signum
                finally:
                    writer.close()
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()  # a generator: stop the engine's producers now
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _write(self, batch: list[Prediction], writer: Any) -> None:
        if self.sorter is not None:  # before the records: a resumed run re-sorts nothing (journal)
            self.sorter.sort(batch)
        writer.write(batch)
        for record in batch:
            if record.error is None:
                self.summary.classified += 1
            else:
                self.summary.failed += 1
                log.warning("%s: %s", record.path, record.error)


@contextlib.contextmanager
def _bar_cleared(bar: Any) -> Iterator[None]:
    """The progress bar wiped off its line while records (stdout) and warnings (stderr) are written,
    then drawn again below them.

    On a terminal both streams share the screen: text written while the bar shows starts on the
    bar's line (``61.01img/s]samples/dog.jpg ...``), and the bar drawn before the first record
    (``0%``) would stay above them. Whatever the format.
    """
    if bar.disable:
        yield
        return
    drawn_at = bar.last_print_t
    bar.clear()
    try:
        yield
    finally:
        if bar.last_print_t == drawn_at:  # not drawn since (an update inside draws at most every 0.1 s)
            bar.refresh()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
