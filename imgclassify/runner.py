"""A whole ``predict`` run: expand inputs, load the model, stream batches to a writer, summarize.

The CLI builds a :class:`PredictOptions` and calls :func:`run_predict`; nothing here knows
about Typer. Diagnostics go to the ``imgclassify`` logger and the ``stderr`` stream given.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .backends import Backend
from .devices import Precision
from .errors import NoImagesError, UsageError
from .sources import expand_inputs
from .writers import SUFFIX_FORMATS, OutputFormat, make_writer

log = logging.getLogger("imgclassify")


@dataclass
class PredictOptions:
    inputs: list[str]
    model: str | None = None
    weights: Path | None = None
    labels: Path | None = None
    device: str = "auto"
    precision: Precision = Precision.FP32
    backend: Backend = Backend.TORCH
    fast_decode: bool = False
    batch_size: int = 8
    top_k: int = 1
    workers: int | None = None
    output_format: OutputFormat | None = None
    output: Path | None = None
    quiet: bool = False
    progress: bool | None = None  # None: when stderr is a terminal


@dataclass
class RunSummary:
    classified: int = 0
    failed: int = 0
    skipped_non_images: int = 0
    elapsed: float = 0.0
    model: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def line(self) -> str:
        total = self.classified + self.failed
        rate = total / self.elapsed if self.elapsed > 0 else 0.0
        skipped = f", {self.skipped_non_images} non-image files skipped" if self.skipped_non_images else ""
        return (
            f"{self.classified} classified, {self.failed} failed{skipped} in {self.elapsed:.1f}s "
            f"({rate:.1f} images/s, {self.model})"
        )


def choose_format(explicit: OutputFormat | None, output: Path | None, stdout: TextIO) -> OutputFormat:
    """Explicit format; else from the output file's suffix; else table on a terminal, JSONL otherwise."""
    if explicit is not None:
        return explicit
    if output is not None:
        return SUFFIX_FORMATS.get(output.suffix.lower(), OutputFormat.JSONL)
    return OutputFormat.TABLE if stdout.isatty() else OutputFormat.JSONL


@contextlib.contextmanager
def _open_output(output: Path | None, stdout: TextIO) -> Iterator[TextIO]:
    if output is None:
        yield stdout
        return
    try:
        stream = open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def run_predict(
    options: PredictOptions, *, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> RunSummary:
    """Run a classification job as the CLI does. Returns the summary; raises ImgclassifyError on usage errors."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    start = time.perf_counter()
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {options.top_k}")
    if options.workers is not None and options.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {options.workers}")

    found = expand_inputs(options.inputs, stdin=stdin)
    for pattern in found.empty_globs:
        log.warning("no file matches %s", pattern)
    if not found.found_any:
        what = ", ".join(found.missing[:3] + found.empty_globs[:3]) or ", ".join(options.inputs[:3])
        skipped = f" ({found.skipped_non_images} non-image files skipped)" if found.skipped_non_images else ""
        raise NoImagesError(f"no image found in {what}{skipped}: give image files, directories or quoted globs")

    from .pipeline import load_classifier

    show_progress = (stderr.isatty() if options.progress is None else options.progress) and not options.quiet
    classifier = load_classifier(
        options.model, weights=options.weights, labels=options.labels, device=options.device,
        precision=options.precision, progress=show_progress, backend=options.backend, fast_decode=options.fast_decode,
    )  # fmt: skip
    classifier.check_top_k(options.top_k)
    fmt = choose_format(options.output_format, options.output, stdout)
    summary = RunSummary(skipped_non_images=found.skipped_non_images, model=classifier.name)

    from tqdm import tqdm

    with (
        _open_output(options.output, stdout) as stream,
        tqdm(total=len(found.paths), unit="img", file=stderr, disable=not show_progress, dynamic_ncols=True) as bar,
    ):
        writer = make_writer(fmt, stream, top_k=options.top_k, model_name=classifier.name)
        try:
            for batch in classifier.predict_batches(
                found.paths, batch_size=options.batch_size, top_k=options.top_k, workers=options.workers
            ):
                writer.write(batch)
                for record in batch:
                    if record.error is None:
                        summary.classified += 1
                    else:
                        summary.failed += 1
                        log.warning("%s: %s", record.path, record.error)
                bar.update(len(batch))
        finally:
            writer.close()
    summary.elapsed = time.perf_counter() - start
    return summary
