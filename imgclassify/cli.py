"""The command line: parse and validate options, call the library, map errors to exit codes.

The only module that knows about Typer. Heavy imports (torch, flask) happen inside commands.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from imgclassify import __version__
from imgclassify.decode.imaging import DEFAULT_MAX_PIXELS, DecodeOptions, decode_mode
from imgclassify.decode.preprocess import Interpolation
from imgclassify.errors import ImgclassifyError, UsageError
from imgclassify.options import ModelOptions
from imgclassify.results.formats import OutputFormat
from imgclassify.run.engines import EngineKind
from imgclassify.run.sorting import SortMode, SortOptions
from imgclassify.server.app import DEFAULT_MAX_FILES
from imgclassify.system.devices import Backend, Precision, validate_device

app = typer.Typer(
    name="imgclassify",
    help="Classify images in batches with PyTorch models: files, directories and globs to a table, JSON, JSONL or CSV.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

log = logging.getLogger("imgclassify")

E = TypeVar("E", bound=enum.Enum)

#: what an option's value is, in its help line (``--model NAME``); options not listed show their name
METAVARS = {
    "model": "NAME", "weights": "FILE", "labels": "FILE", "device": "DEVICE", "max_pixels": "N", "top_k": "K",
    "threshold": "P", "max_failures": "N|N%", "batch_size": "N", "output": "FILE", "manifest": "FILE",
    "workers": "N", "sort_into": "DIR", "shard": "K/N", "ray_address": "ADDRESS", "ray_actors": "N",
    "image": "FILE", "host": "ADDRESS", "port": "PORT", "threads": "N", "max_upload_mb": "MB",
    "max_batch_size": "N", "max_batch_delay_ms": "MS", "read_timeout": "SECONDS", "thumbnail_size": "PIXELS",
    "base_dir": "DIR", "title": "TEXT", "results_format": "json|jsonl|csv|parquet", "max_files": "N", "max_queue": "N",
    "api_key_file": "FILE", "resize": "N", "crop": "N", "mean": "R,G,B", "std": "R,G,B",
    "storage_option": "KEY=VALUE",
    "cache_dir": "DIR",
}  # fmt: skip
ARGUMENT_METAVARS = {"paths": "PATH", "shards": "SHARD", "output": "OUTPUT", "results": "RESULTS"}


class Command(TyperCommand):
    """A command whose help names values (``--model NAME``, ``PATHS...``), never Python types (``<list[str]>``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                if param.metavar is None:  # the usage line adds "..." where it takes several
                    param.metavar = ARGUMENT_METAVARS.get(param.name or "", (param.name or "").upper())
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            elif isinstance(param, TyperOption) and param.metavar is None and not param.is_flag:
                param.metavar = METAVARS.get(param.name or "", (param.name or "").upper())


def choice(kind: type[E], what: str) -> dict[str, Any]:
    """Option keywords for a closed set: the values in the help, and an error that lists them."""
    values = [str(member.value) for member in kind]

    def parse(value: str | E) -> E:
        if isinstance(value, kind):
            return value
        try:
            return kind(str(value).lower())
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a {what}; the {what}s are: {', '.join(values)}") from None

    return {"parser": parse, "metavar": "|".join(values)}


def entry_point() -> None:
    """The console script: the commands, then a quick exit (:func:`runtime.exit_process`)."""
    from imgclassify.system.runtime import exit_process

    try:
        app(prog_name="imgclassify")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): Python prints it and exits 1
        print(code, file=sys.stderr)
        code = 1
    exit_process(code)


class _Formatter(logging.Formatter):
    """``imgclassify: warning: message``: lower-case level names, without renaming them process-wide."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"imgclassify: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _setup_logging(quiet: bool, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING)


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """The one place where library errors become a stderr line and an exit code."""
    try:
        yield
    except ImgclassifyError as exc:
        typer.echo(f"imgclassify: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("imgclassify: interrupted", err=True)
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imgclassify {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Classify images in batches with PyTorch models."""


def _device(value: str) -> str:
    try:
        return validate_device(value)
    except ImgclassifyError as exc:
        raise typer.BadParameter(str(exc)) from None


ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="A registry name (`imgclassify models`), timm:NAME[.TAG], hf:ORG/REPO[@REV], or a path: a model folder (timm or transformers layout), .onnx, TorchScript or .pt2 file. Default: densenet121, or the bundled efficientnet_lite0 when DenseNet's weights cannot be had offline.",
    ),
]
WeightsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--weights",
        help="Local checkpoint for the chosen architecture: .safetensors or a state_dict (loaded weights-only).",
        dir_okay=False,
    ),
]
LabelsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--labels", help='Labels JSON: {"0": ["wnid", "name"]}, {"0": "name"} or ["name", ...].', dir_okay=False
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", "-d", callback=_device, help="auto, cpu, cuda, cuda:N or mps. auto: cuda, then mps, then cpu."
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        **choice(Precision, "precision"),
        help="fp32 (exact), bf16/fp16 autocast where the device supports it, or int8 (OpenVINO on the CPU, quantized once).",
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        **choice(Backend, "backend"),
        help="torch; openvino (CPU; the imgclassify[openvino] extra); onnxruntime (the imgclassify[onnx] extra; the default for .onnx models).",
    ),
]
ExactDecodeOpt = Annotated[
    bool,
    typer.Option(
        "--exact-decode",
        help="Decode JPEGs at full size: torchvision's reference pixels. The default decodes those of at least twice the resize size at reduced scale (faster, same top-1 accuracy measured).",
    ),
]
FastDecodeOpt = Annotated[
    bool,
    typer.Option(
        "--fast-decode",
        help="As the default (JPEGs of at least twice the resize size at reduced scale), and every image made smaller resized on torch's uint8 kernels: faster still, pixels slightly different.",
    ),
]
AllowTruncatedOpt = Annotated[
    bool,
    typer.Option("--allow-truncated", help="Classify truncated files (the missing part is grey) instead of an error."),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse images with more pixels than this (decompression bombs); big JPEGs decode at reduced scale first.",
    ),
]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes per image, with probabilities.")]
ThresholdOpt = Annotated[
    Optional[float],
    typer.Option(
        "--threshold",
        help="A probability from 0 to 1: records whose top-1 probability is below it keep their class and say confident: false.",
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only errors on stderr: no progress, warnings or summary.")
]
ServeQuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr: no start-up line or request log.")
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Images per forward pass. Default: from the device the model runs on: 8 on the CPU (and mps), 64 on CUDA.",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        "-w",
        min=0,
        help="Decoding processes beside the model (0: decode in the main process). Default: from the cores available.",
        show_default=False,
    ),
]
MaxFailuresOpt = Annotated[
    Optional[str],
    typer.Option(
        "--max-failures",
        help="Stop (exit 1, output still valid) once more files than N, or N% of the inputs, failed.",
        show_default=False,
    ),
]
ProgressOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--progress/--no-progress",
        help="Progress bar on stderr. Default: when stderr is a terminal.",
        show_default=False,
    ),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never download weights (also: IMGCLASSIFY_OFFLINE=1).")]
StorageOptionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--storage-option",
        help="KEY=VALUE for the fsspec filesystem of s3://, gs:// or az:// URLs (repeat it), such as endpoint_url=http://127.0.0.1:9000 or anon=true. Credentials come from each filesystem's own configuration otherwise (for S3: AWS_* variables, profiles). Values are never printed.",
        show_default=False,
    ),
]
ResizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--resize", min=1, help="Resize the shorter side to N pixels (default: the model's own).", show_default=False
    ),
]
CropOpt = Annotated[
    Optional[int],
    typer.Option(
        "--crop",
        min=1,
        help="Center crop N x N, the model's input size (default: the model's own).",
        show_default=False,
    ),
]
InterpolationOpt = Annotated[
    Optional[Interpolation],
    typer.Option(
        "--interpolation", **choice(Interpolation, "interpolation"), help="Resize filter (default: the model's own).",
        show_default=False,
    ),
]  # fmt: skip
MeanOpt = Annotated[
    Optional[str],
    typer.Option(
        "--mean",
        help="Normalization mean per channel, R,G,B from 0 to 1 (default: the model's own).",
        show_default=False,
    ),
]
StdOpt = Annotated[
    Optional[str],
    typer.Option("--std", help="Normalization std per channel, R,G,B (default: the model's own).", show_default=False),
]
MultiLabelOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--multi-label/--single-label",
        help="Sigmoid scores, one per class (with --threshold: every class above it), or softmax. Default: as the model's config says, else single-label.",
        show_default=False,
    ),
]


F = TypeVar("F", bound=Callable[..., Any])

#: the model options, declared once: (parameter, its Typer declaration, default)
MODEL_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("model", ModelOpt, None),
    ("weights", WeightsOpt, None),
    ("labels", LabelsOpt, None),
    ("device", DeviceOpt, "auto"),
    ("precision", PrecisionOpt, Precision.FP32),
    ("backend", BackendOpt, Backend.TORCH),
    ("exact_decode", ExactDecodeOpt, False),
    ("fast_decode", FastDecodeOpt, False),
    ("allow_truncated", AllowTruncatedOpt, False),
    ("max_pixels", MaxPixelsOpt, DEFAULT_MAX_PIXELS),
    ("offline", OfflineOpt, False),
    ("resize", ResizeOpt, None),
    ("crop", CropOpt, None),
    ("interpolation", InterpolationOpt, None),
    ("mean", MeanOpt, None),
    ("std", StdOpt, None),
    ("multi_label", MultiLabelOpt, None),
)


def model_options_from(values: dict[str, Any]) -> ModelOptions:
    decode = DecodeOptions(
        decode_mode(exact=values.pop("exact_decode"), fast=values.pop("fast_decode")),
        allow_truncated=values.pop("allow_truncated"),
        max_pixels=values.pop("max_pixels"),
    )
    return ModelOptions(decode=decode, **values)


def with_model_options(command: F) -> F:
    """Give ``command`` the model options; it receives them as one ``model_options: ModelOptions``.

    The options appear where the ``model_options`` parameter stands in its signature.
    """
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name == "model_options":
            params += [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=declared)
                for name, declared, default in MODEL_OPTIONS
            ]
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name, _, _ in MODEL_OPTIONS}
        with reporting_errors():  # a bad --mean/--std: a usage error, not a traceback
            model_options = model_options_from(values)
        return command(**kwargs, model_options=model_options)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


@app.command(cls=Command, short_help="Classify images: a record per file, in input order.")
@with_model_options
def predict(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories (walked recursively), quoted globs (** works), URLs (s3://, gs://, az:// prefixes, keys or globs; http(s)://), or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    model_options: ModelOptions,
    max_failures: MaxFailuresOpt = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="With --output FILE (jsonl/csv): skip inputs already recorded there, append the rest. Refused when the manifest shows another model or options.",
        ),
    ] = False,
    batch_size: BatchSizeOpt = None,
    top_k: TopKOpt = 1,
    threshold: ThresholdOpt = None,
    output_format: Annotated[
        Optional[OutputFormat],
        typer.Option(
            "--format",
            "-f",
            **choice(OutputFormat, "format"),
            help="Output format. Default: from --output's suffix (.json, .jsonl, .ndjson, .csv, .parquet); else table on a terminal, JSONL otherwise.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output",
            "-o",
            help="Write records to FILE instead of stdout (and the run manifest to FILE.manifest.json). A URL (s3://bucket/out.jsonl, gs://, az://) is written locally, then uploaded with its manifest.",
        ),
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option(
            "--manifest",
            help="Write the run manifest to this file (default: beside --output; none for stdout).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = None,
    sort_into: Annotated[
        Optional[Path],
        typer.Option(
            "--sort-into",
            help="After classification put each image into DIR/<class_id>-<class_name>/ (DIR/unknown/ below --threshold).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    sort_mode: Annotated[
        Optional[SortMode],
        typer.Option(
            "--sort-mode",
            **choice(SortMode, "sort mode"),
            help="copy (default: sources untouched), hardlink, symlink or move.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="With --sort-into: print the plan (mode, source, destination) on stdout, change nothing."
        ),
    ] = False,
    quiet: QuietOpt = False,
    shard: Annotated[
        Optional[str],
        typer.Option(
            "--shard",
            help="K/N: classify only the K-th of N shares of the inputs (chosen by a hash of each path), for N independent jobs; join their outputs with `imgclassify merge`.",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        EngineKind,
        typer.Option(
            "--engine",
            **choice(EngineKind, "engine"),
            help="Where the model runs: local (this process), or ray (a Ray cluster; the imgclassify[ray] extra).",
        ),
    ] = EngineKind.LOCAL,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address",
            help="With --engine ray: the cluster (host:port or ray://...). Default: $RAY_ADDRESS, else a local Ray for this run.",
            show_default=False,
        ),
    ] = None,
    ray_actors: Annotated[
        Optional[int],
        typer.Option(
            "--ray-actors",
            min=1,
            help="With --engine ray: model copies (actors). Default: one per GPU, else half the cluster's CPUs.",
            show_default=False,
        ),
    ] = None,
    storage_option: StorageOptionOpt = None,
) -> None:
    """Classify images; one record per file, in input order. Exit 0: all classified, 1: some failed, 2: usage error."""
    from imgclassify.run.runner import PredictOptions, run_predict
    from imgclassify.run.shards import Shard
    from imgclassify.system.runtime import tune_allocator
    from imgclassify.system.storage import is_url, parse_storage_options

    _setup_logging(quiet)
    tune_allocator()
    with reporting_errors():
        if engine is not EngineKind.RAY and (ray_address is not None or ray_actors is not None):
            raise UsageError("--ray-address and --ray-actors need --engine ray")
        options = PredictOptions(
            inputs=paths, model=model_options, max_failures=max_failures, resume=resume, batch_size=batch_size,
            top_k=top_k, workers=workers, output_format=output_format, manifest=manifest,
            output=_local_output(output), output_url=output if output is not None and is_url(output) else None,
            quiet=quiet, progress=progress, tune_process=True, shard=Shard.parse(shard) if shard is not None else None,
            threshold=threshold, sort=_sort_options(sort_into, sort_mode, dry_run), engine=engine,
            engine_settings=_engine_settings(engine, ray_address, ray_actors),
            storage_options=parse_storage_options(storage_option or []),
        )  # fmt: skip
        summary = run_predict(options)
    if not quiet:
        typer.echo(f"imgclassify: {summary.line()}", err=True)
    raise typer.Exit(summary.exit_code)


def _local_output(output: str | None) -> Path | None:
    """``--output`` as a local file (None for a URL: written locally, then uploaded, by the runner)."""
    from imgclassify.system.storage import is_url

    if output is None or is_url(output):
        return None
    if Path(output).is_dir():
        raise UsageError(f"--output {output} is a directory: give a file name")
    return Path(output)


def _engine_settings(engine: EngineKind, ray_address: str | None, ray_actors: int | None) -> object | None:
    if engine is EngineKind.RAY:
        from imgclassify.run.engines.ray import RayEngine

        return RayEngine.Settings(address=ray_address, actors=ray_actors)
    return None


def _sort_options(into: Path | None, mode: SortMode | None, dry_run: bool) -> SortOptions | None:
    if into is None:
        if mode is not None or dry_run:
            raise UsageError(f"{'--sort-mode' if mode is not None else '--dry-run'} needs --sort-into DIR")
        return None
    return SortOptions(into, mode or SortMode.COPY, dry_run)


class ListFormat(str, enum.Enum):
    TABLE = "table"
    JSON = "json"


@app.command("models", cls=Command, short_help="List the models and whether they work offline.")
def list_models(
    output_format: Annotated[
        Optional[ListFormat],
        typer.Option(
            "--format",
            "-f",
            **choice(ListFormat, "format"),
            help="table (default on a terminal) or json.",
            show_default=False,
        ),
    ] = None,
    search: Annotated[
        Optional[str],
        typer.Option(
            "--search",
            "-s",
            help="Only models whose name contains TEXT, timm's pretrained models too (as timm:NAME.TAG; run with -m).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List the models: name, parameters, input size, and whether their weights work offline now."""
    from imgclassify.models.catalog import list_models as rows_of

    rows = rows_of(search)
    fmt = output_format or (ListFormat.TABLE if sys.stdout.isatty() else ListFormat.JSON)
    if fmt is ListFormat.JSON:
        keys = ("name", "params_m", "input_size", "top1", "weights") if search is None else None
        typer.echo(
            json.dumps([{k: v for k, v in r.to_dict().items() if keys is None or k in keys} for r in rows], indent=1)
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="imgclassify models", box=None, pad_edge=False)
    for column, justify in (
        ("name", "left"),
        ("params (M)", "right"),
        ("input", "right"),
        ("top-1 %", "right"),
        ("weights", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row.name,
            f"{row.params_m:.1f}" if row.params_m is not None else "",
            str(row.input_size),
            f"{row.top1:.1f}" if row.top1 else "",
            row.weights,
        )
    Console(highlight=False).print(table)


@app.command(cls=Command, short_help="Check this environment (torch, devices, models).")
def doctor(
    output_format: Annotated[
        ListFormat, typer.Option("--format", "-f", **choice(ListFormat, "format"), help="table or json.")
    ] = ListFormat.TABLE,
    image: Annotated[
        Optional[Path],
        typer.Option(
            "--image",
            help="An RGB photo for the preprocessing parity check (default: a generated JPEG).",
            dir_okay=False,
            exists=True,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check this environment: Python, torch build, CUDA/MPS, OpenVINO, CPU, allocator, offline models, preprocessing parity. Exit 1 when a check fails."""
    from imgclassify.doctor import healthy, print_table, run_checks

    with reporting_errors():
        checks = run_checks(image=image)
    ok = healthy(checks)
    if output_format is ListFormat.JSON:
        typer.echo(json.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}, indent=1))
    else:
        print_table(checks, ok)
    raise typer.Exit(0 if ok else 1)


@app.command(cls=Command, short_help="Serve the HTTP endpoint (POST /predict).")
@with_model_options
def serve(
    model_options: ModelOptions,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Default number of classes per answer (?top_k= overrides).")
    ] = 1,
    threshold: ThresholdOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 5000,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Request threads per worker process.")] = 8,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Worker processes, each with its own model copy.")
    ] = 1,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest request body accepted (413 beyond).")
    ] = 20.0,
    max_batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--max-batch-size",
            min=1,
            help="Most images stacked into one forward pass. Default: from the device the model runs on: 8 on the CPU (and mps), 64 on CUDA.",
            show_default=False,
        ),
    ] = None,
    max_batch_delay_ms: Annotated[
        float,
        typer.Option("--max-batch-delay-ms", min=0.0, help="How long a request waits for others to share its batch."),
    ] = 5.0,
    max_files: Annotated[
        int,
        typer.Option(
            "--max-files",
            min=1,
            help="Most files in one request (413 beyond, decided while the body arrives); memory per request follows the batch size, not this.",
        ),
    ] = DEFAULT_MAX_FILES,
    max_queue: Annotated[
        Optional[int],
        typer.Option(
            "--max-queue",
            min=1,
            help="Most images waiting for the model per worker; a request beyond gets 503 with Retry-After at once. Default: two forward passes' worth (2 x --max-batch-size).",
            show_default=False,
        ),
    ] = None,
    no_batching: Annotated[
        bool, typer.Option("--no-batching", help="One request per forward pass (same as --max-batch-size 1).")
    ] = False,
    read_timeout: Annotated[
        float,
        typer.Option(
            "--read-timeout", min=0.01, help="Seconds a client may stall while sending a request (408 after)."
        ),
    ] = 30.0,
    api_key_file: Annotated[
        Optional[Path],
        typer.Option(
            "--api-key-file",
            help="Require this file's content as 'Authorization: Bearer KEY' on /predict, /info and /metrics (default: IMGCLASSIFY_API_KEY, if set; this file wins over it).",
            show_default=False,
        ),
    ] = None,
    quiet: ServeQuietOpt = False,
) -> None:
    """Serve the tutorial's HTTP endpoint: GET /, POST /predict (multipart 'file'), /info, /healthz, /readyz, /metrics."""
    _setup_logging(quiet)
    with reporting_errors():
        from imgclassify.models.plan import plan_model
        from imgclassify.results.render import check_threshold
        from imgclassify.server import serve as run_server
        from imgclassify.server.app import ServerConfig, open_server_warning, require_flask, resolve_api_key

        check_threshold(threshold)
        api_key = resolve_api_key(api_key_file)  # a bad --api-key-file fails before the model loads
        require_flask()
        # fail here, with a clear message, rather than in a worker process
        plan = plan_model(model_options, progress=not quiet)
        from imgclassify.system.devices import resolve_device

        resolve_device(model_options.device)
        config = ServerConfig(
            options=model_options.replace(model=plan.spec.name), top_k=top_k, max_upload_mb=max_upload_mb,
            max_batch_size=1 if no_batching else max_batch_size, max_batch_delay_ms=0.0 if no_batching else max_batch_delay_ms,
            read_timeout_s=read_timeout, threshold=threshold, max_files=max_files, max_queue=max_queue,
            api_key_file=None if api_key_file is None else str(api_key_file.absolute()), api_key=api_key,
        )  # fmt: skip
        if (warning := open_server_warning(config, host, port)) is not None:
            log.warning(warning)
        if not quiet:
            keyed = ", API key required" if config.api_key is not None else ""
            typer.echo(
                f"imgclassify: serving {plan.spec.name} on http://{host}:{port} (POST /predict{keyed})", err=True
            )
        run_server(config, host=host, port=port, threads=threads, workers=workers, quiet=quiet)


@app.command(cls=Command, short_help="Write an HTML page of a run's results.")
def report(
    results: Annotated[
        str,
        typer.Argument(
            help="A results file written by `imgclassify predict` (json, jsonl, csv or parquet), or its URL (s3://, gs://, az://).",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="The HTML file to write, or a URL (s3://bucket/report.html): written locally, then uploaded.",
        ),
    ] = "report.html",
    manifest: Annotated[
        Optional[str],
        typer.Option(
            "--manifest",
            help="The run's manifest (provenance JSON; a file or a URL). Default: RESULTS.manifest.json beside the results, if present.",
            show_default=False,
        ),
    ] = None,
    results_format: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            "-f",
            help="json, jsonl, csv or parquet. Default: from the suffix, else sniffed from the content.",
            show_default=False,
        ),
    ] = None,
    thumbnails: Annotated[
        bool,
        typer.Option(
            "--thumbnails/--no-thumbnails", help="Embed a JPEG thumbnail per image (--no-thumbnails: a small file)."
        ),
    ] = True,
    thumbnail_size: Annotated[
        int, typer.Option("--thumbnail-size", min=16, max=1024, help="Longer side of the thumbnails, in pixels.")
    ] = 160,
    base_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--base-dir",
            help="Folder that relative image paths start from. Default: the current folder, then the results file's.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="The page's title.", show_default=False)] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers",
            "-w",
            min=0,
            help="Processes making thumbnails (0: in the main process). Default: one per core, up to 8.",
            show_default=False,
        ),
    ] = None,
    storage_option: StorageOptionOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write one self-contained HTML page of a run's results: thumbnails, filters, class counts, failures, provenance."""
    with reporting_errors():
        from imgclassify.results.formats import readable_format
        from imgclassify.results.report import write_report
        from imgclassify.system.storage import parse_storage_options

        fmt = readable_format(results_format) if results_format is not None else None
        summary = write_report(
            results, output, manifest=manifest, thumbnails=thumbnails, thumbnail_size=thumbnail_size,
            results_format=fmt, base_dir=base_dir, title=title, workers=workers,
            storage_options=parse_storage_options(storage_option or []),
        )  # fmt: skip
    if not quiet:
        for warning in summary.warnings:
            typer.echo(f"imgclassify: warning: {warning}", err=True)
        typer.echo(f"imgclassify: {summary.line()}", err=True)


@app.command(cls=Command, short_help="Join the outputs of predict --shard K/N.")
def merge(
    output: Annotated[
        str,
        typer.Argument(
            help="The merged output: .jsonl, .json, .csv or .parquet (its manifest goes beside it); a file, or a URL (s3://, gs://, az://): written locally, then uploaded.",
            show_default=False,
        ),
    ],
    shards: Annotated[
        list[str],
        typer.Argument(
            help="The outputs of `imgclassify predict --shard K/N -o FILE`, one per shard, with their manifests beside them; files, or URLs (a quoted URL glob such as 's3://bucket/run/out.*.jsonl' lists them).",
            show_default=False,
        ),
    ],
    storage_option: StorageOptionOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Join the outputs of `predict --shard 1/N` ... `N/N` into one output and manifest, each input once."""
    with reporting_errors():
        from imgclassify.run.merge import merge_shards
        from imgclassify.system.storage import parse_storage_options

        summary = merge_shards(output, shards, storage_options=parse_storage_options(storage_option or []))
    if not quiet:
        for warning in summary.warnings:
            typer.echo(f"imgclassify: warning: {warning}", err=True)
        typer.echo(f"imgclassify: {summary.line()}", err=True)


@app.command(cls=Command, short_help="Write one embedding (pooled features) per image: Parquet or .npy.")
@with_model_options
def embed(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories (walked recursively), quoted globs (** works), or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    model_options: ModelOptions,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="FILE.parquet (columns path, vector, model, error) or FILE.npy (one float32 row per input, with FILE.jsonl: path, row, error); the run manifest goes to FILE.manifest.json.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Skip the inputs already in --output and add the rest (same inputs for .npy). Refused when the manifest shows another model or preprocessing.",
        ),
    ] = False,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    max_failures: MaxFailuresOpt = None,
    progress: ProgressOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write one embedding per image: the model's pooled features (its last layer's input). Exit 0: all embedded, 1: some failed."""
    from imgclassify.embed.run import EmbedOptions, run_embed

    _setup_logging(quiet)
    with reporting_errors():
        summary = run_embed(
            EmbedOptions(
                inputs=paths,
                output=output,
                model=model_options,
                batch_size=batch_size,
                workers=workers,
                resume=resume,
                max_failures=max_failures,
                quiet=quiet,
                progress=progress,
            )
        )
    if not quiet:
        typer.echo(f"imgclassify: {summary.line()}", err=True)
    raise typer.Exit(summary.exit_code)


class FitHead(str, enum.Enum):
    NEAREST = "nearest"
    LOGISTIC = "logistic"
    CENTROID = "centroid"


@app.command(cls=Command, short_help="Fit your own categories from a folder of examples.")
@with_model_options
def fit(
    examples: Annotated[
        Path,
        typer.Argument(
            metavar="EXAMPLES_DIR",
            help="A folder with one folder of example images per category: EXAMPLES_DIR/<category>/*.",
            file_okay=False,
            show_default=False,
        ),
    ],
    model_options: ModelOptions,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="MODEL_DIR",
            help="The model folder to write (new, empty, or an earlier fit's); then run it with --model MODEL_DIR.",
            file_okay=False,
            show_default=False,
        ),
    ],
    head: Annotated[
        FitHead,
        typer.Option(
            "--head",
            **choice(FitHead, "head"),
            help="nearest (the most similar example; the most accurate in docs/fit.md), logistic (regression) or centroid (each category's mean).",
        ),
    ] = FitHead.NEAREST,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--cache-dir",
            help="Where embeddings are kept by file sha256, so a refit embeds only new examples. Default: MODEL_DIR/embedding-cache.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    output_format: Annotated[
        ListFormat,
        typer.Option(
            "--format",
            "-f",
            **choice(ListFormat, "format"),
            help="The report on stdout: table (per-category cross-validated accuracy, confusion, threshold) or json.",
        ),
    ] = ListFormat.TABLE,
    quiet: QuietOpt = False,
) -> None:
    """Fit a head on a backbone's features (--model; default: the bundled efficientnet_lite0) from EXAMPLES_DIR/<category>/* and write MODEL_DIR; `--model MODEL_DIR` then classifies into those categories."""
    from imgclassify.fit.run import FitOptions, run_fit

    _setup_logging(quiet)
    with reporting_errors():
        summary = run_fit(
            FitOptions(
                examples=examples,
                output=output,
                model=model_options,
                head=head.value,
                cache_dir=cache_dir,
                batch_size=batch_size,
                workers=workers,
                quiet=quiet,
            )
        )
    if output_format is ListFormat.JSON:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        typer.echo(summary.report(), nl=False)
    if not quiet:
        typer.echo(f"imgclassify: {summary.line()}", err=True)
