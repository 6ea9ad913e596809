"""A whole ``predict`` run: expand inputs, load the model, stream batches to a writer, summarize.

The CLI builds a :class:`PredictOptions` and calls :func:`run_predict`; nothing here knows
about Typer. Diagnostics go to the ``imgclassify`` logger and the ``stderr`` stream given.
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
from typing import TextIO

from .backends import Backend
from .devices import Precision
from .errors import NoImagesError, UsageError
from .imaging import DecodeOptions
from .resume import recorded_paths, resume_key
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
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    batch_size: int = 8
    top_k: int = 1
    workers: int | None = None
    output_format: OutputFormat | None = None
    output: Path | None = None
    quiet: bool = False
    progress: bool | None = None  # None: when stderr is a terminal
    #: stop once more files than this failed: a count ("10") or a share of the inputs ("5%")
    max_failures: str | None = None
    #: skip inputs already recorded in ``output`` and append the rest (jsonl/csv)
    resume: bool = False


@dataclass
class RunSummary:
    classified: int = 0
    failed: int = 0
    skipped_non_images: int = 0
    elapsed: float = 0.0
    model: str = ""
    already_done: int = 0
    #: the signal that stopped the run early (SIGINT, SIGTERM), if any
    signal: int | None = None
    stopped_for_failures: bool = False

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return 1 if self.failed else 0

    def line(self) -> str:
        total = self.classified + self.failed
        rate = total / self.elapsed if self.elapsed > 0 else 0.0
        skipped = f", {self.skipped_non_images} non-image files skipped" if self.skipped_non_images else ""
        resumed = f", {self.already_done} already in the output" if self.already_done else ""
        stopped = ""
        if self.signal is not None:
            stopped = f"; interrupted by {signal.Signals(self.signal).name}"
        elif self.stopped_for_failures:
            stopped = "; stopped early: too many failures (--max-failures)"
        return (
            f"{self.classified} classified, {self.failed} failed{skipped}{resumed} in {self.elapsed:.1f}s "
            f"({rate:.1f} images/s, {self.model}){stopped}"
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
        return SUFFIX_FORMATS.get(output.suffix.lower(), OutputFormat.JSONL)
    return OutputFormat.TABLE if stdout.isatty() else OutputFormat.JSONL


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
        precision=options.precision, progress=show_progress, backend=options.backend, decode=options.decode,
    )  # fmt: skip
    classifier.check_top_k(options.top_k)
    fmt = choose_format(options.output_format, options.output, stdout)
    summary = RunSummary(skipped_non_images=found.skipped_non_images, model=classifier.name)
    paths, header = found.paths, True
    if options.resume:
        if options.output is None:
            raise UsageError("--resume needs --output FILE (the file to continue)")
        done, has_header = recorded_paths(options.output, fmt)
        paths = [p for p in found.paths if resume_key(p, fmt) not in done]
        summary.already_done = len(found.paths) - len(paths)
        header = not has_header
    limit = failure_limit(options.max_failures, len(found.paths))

    from tqdm import tqdm

    previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Terminated(signum)

    if previous is not None:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with (
            _open_output(options.output, stdout, append=options.resume) as stream,
            tqdm(total=len(paths), unit="img", file=stderr, disable=not show_progress, dynamic_ncols=True) as bar,
        ):
            writer = make_writer(fmt, stream, top_k=options.top_k, model_name=classifier.name, header=header)
            try:
                for batch in classifier.predict_batches(
                    paths, batch_size=options.batch_size, top_k=options.top_k, workers=options.workers
                ):
                    writer.write(batch)
                    for record in batch:
                        if record.error is None:
                            summary.classified += 1
                        else:
                            summary.failed += 1
                            log.warning("%s: %s", record.path, record.error)
                    bar.update(len(batch))
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
                writer.close()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    summary.elapsed = time.perf_counter() - start
    return summary


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
