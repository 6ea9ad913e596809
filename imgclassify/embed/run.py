"""A whole ``embed`` run: inputs expanded, the model loaded as a feature extractor, vectors streamed out.

One vector per image goes to the output as batches come; the run manifest
(``FILE.manifest.json``) is kept as ``predict`` keeps it; a summary is returned.

The CLI builds an :class:`EmbedOptions` and calls :func:`run_embed`. ``--resume`` skips the inputs
already in the output, and is refused when the manifest shows another model or preprocessing
(the check ``predict --resume`` makes).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from imgclassify.embed.writers import EmbeddingFormat, EmbeddingWriter, format_for, open_writer, records_path
from imgclassify.errors import NoImagesError, UsageError
from imgclassify.options import ModelOptions

if TYPE_CHECKING:
    from imgclassify.embed.embedder import Embedder
    from imgclassify.results.manifest import Manifest

log = logging.getLogger("imgclassify")


@dataclass
class EmbedOptions:
    inputs: list[str]
    #: ``.parquet``/``.pq`` or ``.npy`` (with ``.jsonl`` records beside it)
    output: Path
    model: ModelOptions = field(default_factory=ModelOptions)
    batch_size: int | None = None
    workers: int | None = None
    resume: bool = False
    #: stop once more files than this failed: a count ("10") or a share of the inputs ("5%")
    max_failures: str | None = None
    quiet: bool = False
    progress: bool | None = None
    command: list[str] | None = None


@dataclass
class EmbedSummary:
    embedded: int = 0
    failed: int = 0
    already_done: int = 0
    skipped_non_images: int = 0
    inputs: int = 0
    dim: int = 0
    model: str = ""
    elapsed: float = 0.0
    output: Path | None = None
    manifest: Path | None = None
    signal: int | None = None
    stopped_for_failures: bool = False

    @property
    def status(self) -> str:
        if self.signal is not None:
            return "interrupted"
        return "stopped" if self.stopped_for_failures else "complete"

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return 1 if self.failed or self.stopped_for_failures else 0

    def line(self) -> str:
        total = self.embedded + self.failed
        rate = total / self.elapsed if self.elapsed > 0 else 0.0
        resumed = f", {self.already_done} already in the output" if self.already_done else ""
        stopped = ""
        if self.signal is not None:
            stopped = f"; interrupted by {signal.Signals(self.signal).name}"
        elif self.stopped_for_failures:
            stopped = "; stopped early: too many failures (--max-failures)"
        return (
            f"{self.embedded} embedded, {self.failed} failed{resumed} in {self.elapsed:.1f}s ({rate:.1f} images/s, "
            f"{self.model}, {self.dim} values each) -> {self.output}{stopped}"
        )


class _Terminated(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM stops the loop as SIGINT does (the output keeps what was written), main thread only."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def validate(options: EmbedOptions) -> EmbeddingFormat:
    """The checks that need neither the inputs nor the model."""
    from imgclassify.decode.loading import check_batch_size
    from imgclassify.run.runner import check_writable, failure_limit

    fmt = format_for(options.output)
    check_batch_size(options.batch_size)
    failure_limit(options.max_failures, 0)
    check_writable(options.output, "--output")
    if fmt is EmbeddingFormat.NPY:
        check_writable(records_path(options.output), "--output")
    if fmt is EmbeddingFormat.PARQUET:
        from imgclassify.embed.writers import _pyarrow

        _pyarrow()
    return fmt


def run_embed(options: EmbedOptions, *, stdin: TextIO | None = None, stderr: TextIO | None = None) -> EmbedSummary:
    """Embed every input into ``options.output``; raises ImgclassifyError on usage errors."""
    from imgclassify.embed.embedder import Embedder
    from imgclassify.models.plan import plan_model
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
    from imgclassify.run.inputs import expand_inputs
    from imgclassify.run.runner import failure_limit, nothing_found

    stdin = stdin if stdin is not None else sys.stdin
    stderr = stderr if stderr is not None else sys.stderr
    start = time.perf_counter()
    fmt = validate(options)
    found = expand_inputs(options.inputs, stdin=stdin)
    if not found.found_any:
        raise NoImagesError(nothing_found(found, list(options.inputs)))
    for pattern in found.empty_globs:
        log.warning("no file matches %s", pattern)
    paths = found.paths
    show_progress = (stderr.isatty() if options.progress is None else options.progress) and not options.quiet
    plan = plan_model(options.model, progress=show_progress)
    manifest_path = manifest_path_for(options.output)
    run = RunInfo(
        batch_size=options.batch_size, workers=options.workers, format=fmt.value, output=str(options.output),
        resume=options.resume, max_failures=options.max_failures,
    )  # fmt: skip
    old = Manifest.read(manifest_path) if options.resume else None
    if old is not None:  # before paying for the model
        _check_resume(old, Manifest("", "running", [], None, run=run, provenance=Provenance.of(plan, None)), options)

    embedder = Embedder(plan)
    from imgclassify.decode.loading import resolve_batch_size

    run.batch_size = resolve_batch_size(options.batch_size, embedder.device)
    summary = EmbedSummary(
        skipped_non_images=found.skipped_non_images, inputs=len(paths), dim=embedder.dim, model=plan.spec.name,
        output=options.output, manifest=manifest_path,
    )  # fmt: skip
    writer = open_writer(
        fmt, options.output, paths=paths, model=plan.spec.name, dim=embedder.dim, resume=options.resume
    )
    todo = [i for i, p in enumerate(paths) if p not in writer.done]
    summary.already_done = len(paths) - len(todo)
    manifest = RunManifest.new(
        manifest_path, command=options.command or command_line(), engine={"name": "local"}, run=run
    )
    if old is not None:
        manifest.manifest.resumed = Resumed(old.started_at, summary.already_done)
    manifest.start(Provenance.of(plan, None, device=str(embedder.device)), openvino=False)
    limit = failure_limit(options.max_failures, len(paths))
    commit = False
    try:
        _stream(embedder, writer, paths, todo, options, summary, limit, stderr, show_progress)
        commit = True
    finally:
        writer.close(commit=commit)
        summary.elapsed = time.perf_counter() - start
        counts = Counts(
            inputs=summary.inputs, classified=summary.embedded, failed=summary.failed,
            skipped_non_images=summary.skipped_non_images, already_done=summary.already_done,
        )  # fmt: skip
        manifest.finish(
            summary.status if commit else "failed", counts, elapsed_s=round(summary.elapsed, 3),
            engine={"name": "local", "embedding": embedder.describe()},
        )  # fmt: skip
    return summary


def _check_resume(old: Manifest, new: Manifest, options: EmbedOptions) -> None:
    differences = [d for d in old.differences(new) if not d.startswith(("top-k", "threshold", "scores"))]
    if differences:
        raise UsageError(
            f"--resume: {options.output} was written by a different run ({'; '.join(differences)}); run again with "
            "that run's options, or write to a new --output"
        )


def _stream(
    embedder: Embedder,
    writer: EmbeddingWriter,
    paths: list[str],
    todo: list[int],
    options: EmbedOptions,
    summary: EmbedSummary,
    limit: int | None,
    stderr: TextIO,
    show_progress: bool,
) -> None:
    from tqdm import tqdm

    names = [paths[i] for i in todo]
    batches = embedder.batches(names, batch_size=options.batch_size, workers=options.workers)
    with tqdm(total=len(names), unit="img", file=stderr, disable=not show_progress, dynamic_ncols=True) as bar:
        try:
            with _sigterm_raises():
                for batch in batches:
                    rows = [(todo[i], names[i], vector, error) for i, vector, error in batch.rows()]
                    writer.write(rows)
                    for _, path, _, error in rows:
                        if error is None:
                            summary.embedded += 1
                        else:
                            summary.failed += 1
                            log.warning("%s: %s", path, error)
                    bar.update(len(rows))
                    if limit is not None and summary.failed > limit:
                        summary.stopped_for_failures = True
                        log.error(
                            "%d files failed, more than --max-failures %s: stopping",
                            summary.failed,
                            options.max_failures,
                        )
                        break
        except KeyboardInterrupt:
            summary.signal = signal.SIGINT
        except _Terminated as exc:
            summary.signal = exc.signum
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
