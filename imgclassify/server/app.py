"""The HTTP endpoint: the tutorial's Flask contract, on the shared pipeline, with dynamic batching.

    gunicorn --threads 8 "imgclassify.server:create_app()"   # configured by IMGCLASSIFY_* variables

Routes: ``GET /`` (the tutorial's hint), ``POST /predict`` (multipart field ``file``, repeated
for several images; ``?top_k=K``, ``?threshold=P``), ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.
Every error is JSON with the right status; uploads stay in memory and never reach the disk.
With an API key (``IMGCLASSIFY_API_KEY`` or ``--api-key-file``), every route but ``/``,
``/healthz`` and ``/readyz`` needs ``Authorization: Bearer KEY`` (:func:`check_authorization`).

Uploads are decoded where ``predict`` would decode them (:class:`UploadDecoding`): on the CPU in
the request threads, or, on CUDA with GPU decoding, in the batcher thread, one batched nvJPEG
call for every request it gathered (request threads then only read the bytes).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import ImgclassifyError, UsageError
from imgclassify.extras import install_hint
from imgclassify.options import ENV_PREFIX, ModelOptions, read_env
from imgclassify.results.records import Prediction
from imgclassify.results.render import check_threshold

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch
    from flask import Flask, Response

    from imgclassify.pipeline import Classifier
    from imgclassify.server.batching import Answer, DynamicBatcher, Prepared

log = logging.getLogger("imgclassify.server")

ROOT_MESSAGE = {"msg": "Try POSTing to the /predict endpoint with an RGB image attachment"}
#: files per request by default (``--max-files``): far more than an interactive client sends; more
#: belongs to ``imgclassify predict``. Memory does not depend on it (requests go in batch-size passes)
DEFAULT_MAX_FILES = 500
#: the default ``--max-queue``: this many forward passes' worth of images waiting (see docs/serve.md)
QUEUE_BATCHES = 2
#: the WSGI environ key by which ``imgclassify serve``'s front (asgi.py) says it counted the images in
ADMITTED_KEY = "imgclassify.admitted_images"
INSTALL_HINT = f"imgclassify serve needs the serve extra: {install_hint('serve')}"


@dataclass
class ServerConfig:
    """Everything ``create_app`` needs; ``from_env`` reads ``IMGCLASSIFY_<FIELD>`` variables."""

    #: the model: the same options as ``predict`` (``IMGCLASSIFY_MODEL``, ``IMGCLASSIFY_DEVICE``, ...)
    options: ModelOptions = field(default_factory=ModelOptions)
    top_k: int = 1
    max_upload_mb: float = 20.0
    #: most images per forward pass; None: the default for the device the model runs on, resolved
    #: by ``create_app`` once the classifier is loaded (:func:`~imgclassify.decode.loading.default_batch_size`)
    max_batch_size: int | None = None
    max_batch_delay_ms: float = 5.0
    #: most files (multipart parts) in one request: 413 ``too_many_files`` beyond, while the body is read
    max_files: int = DEFAULT_MAX_FILES
    #: most images admitted and not yet answered (per worker process): a request that would pass it
    #: gets 503 ``overloaded`` with ``Retry-After`` at once. None: ``QUEUE_BATCHES`` forward passes' worth
    max_queue: int | None = None
    request_timeout_s: float = 60.0
    read_timeout_s: float = 30.0  # `imgclassify serve`: a request body that stalls this long is cut off (408)
    #: default ``?threshold=``: answers whose top-1 probability is below it say ``"confident": false``
    threshold: float | None = None
    #: ``--api-key-file``: the file the API key is read from (workers get this path, never the key)
    api_key_file: str | None = None
    #: the API key (``IMGCLASSIFY_API_KEY``, or the file's content): None serves everyone. Never in
    #: repr, ``/info``, logs, metrics or error messages; see :func:`check_authorization`
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is None and self.api_key_file is not None:
            self.api_key = read_api_key_file(self.api_key_file)
        elif self.api_key is not None:
            self.api_key = _checked_key(self.api_key, "the API key")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        env = os.environ if environ is None else environ
        kinds = {f.name: _KINDS[str(f.type)] for f in fields(cls) if f.name not in ("options", "api_key")}
        values = read_env(env, kinds)
        values["api_key"] = resolve_api_key(values.get("api_key_file"), env)
        return cls(options=ModelOptions.from_env(env), **values)

    def resolved_for(self, device: str | torch.device) -> ServerConfig:
        """This config with the defaults that depend on the device the model runs on filled in."""
        from imgclassify.decode.loading import resolve_batch_size

        option = "--max-batch-size (IMGCLASSIFY_MAX_BATCH_SIZE)"
        batch = resolve_batch_size(self.max_batch_size, device, option)
        queue = self.max_queue if self.max_queue is not None else QUEUE_BATCHES * batch
        if queue < 1:
            raise UsageError(f"--max-queue (IMGCLASSIFY_MAX_QUEUE) must be at least 1, got {queue}")
        if self.max_files < 1:
            raise UsageError(f"--max-files (IMGCLASSIFY_MAX_FILES) must be at least 1, got {self.max_files}")
        return replace(self, max_batch_size=batch, max_queue=queue)


_KINDS: dict[str, type] = {
    "int": int, "float": float, "bool": bool, "str": str, "float | None": float, "int | None": int,
    "str | None": str,
}  # fmt: skip


# -- the API key -------------------------------------------------------------------------------

API_KEY_ENV = ENV_PREFIX + "API_KEY"
API_KEY_FILE_OPTION = "--api-key-file"
#: what anyone may call when a key is set: load balancers' probes, and the page (it holds no data).
#: Every other path needs the key, so a route added later is never open by mistake.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})
_HOW = "in the header 'Authorization: Bearer <key>'"
_UNAUTHORIZED = {
    "missing": f"this server needs an API key: send it {_HOW}",
    "wrong_scheme": f"the API key goes in the Bearer scheme: send it {_HOW}",
    "invalid_token": f"wrong API key: send this server's key {_HOW}",
}


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """The API key in ``path`` (``--api-key-file``): its text stripped of surrounding whitespace.

    A file that cannot be read, is empty, or holds more than one line is a :class:`UsageError`
    naming ``--api-key-file``; no message ever holds the file's content.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{API_KEY_FILE_OPTION} {path}: cannot read it ({exc.strerror or 'error'})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{API_KEY_FILE_OPTION} {path}: not UTF-8 text: the key must be one line of text") from None
    return _checked_key(text, f"{API_KEY_FILE_OPTION} {path}")


def _checked_key(text: str, source: str) -> str:
    key = text.strip()
    if not key:
        raise UsageError(f"{source} is empty: it must hold the API key")
    if not key.isprintable():  # a newline or a control character: no client could send it in a header
        raise UsageError(f"{source}: the API key must be one line of printable characters")
    return key


def resolve_api_key(
    api_key_file: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The API key: ``api_key_file``'s content if one is given, else ``IMGCLASSIFY_API_KEY``, else None (no key).

    The file wins over the variable (an option over the environment), with a warning that the
    variable is ignored. An empty or blank variable is no key.
    """
    env = os.environ if environ is None else environ
    variable = env.get(API_KEY_ENV, "").strip()
    if api_key_file is None:
        return _checked_key(variable, API_KEY_ENV) if variable else None
    if variable:
        log.warning("%s is ignored: %s %s gives the API key", API_KEY_ENV, API_KEY_FILE_OPTION, api_key_file)
    return read_api_key_file(api_key_file)


def needs_api_key(path: str) -> bool:
    """Whether a request for ``path`` must carry the key (when one is set): all but :data:`OPEN_PATHS`."""
    return path not in OPEN_PATHS


def check_authorization(header_value: str | None, key: bytes | None) -> str | None:
    """Why a request with this ``Authorization`` header is refused, or None: it may go on.

    ``key``: the API key's UTF-8 bytes, None when no key is set (everyone may). ``header_value``
    as WSGI gives it (the raw bytes as latin-1 text; the ASGI layer decodes them the same way).
    Reasons: ``"missing"`` (no header), ``"wrong_scheme"`` (not ``Bearer``), ``"invalid_token"``
    (a Bearer token that is not the key, compared in constant time). Both the ASGI layer and the
    Flask app decide with this function; :func:`unauthorized` is their answer.
    """
    if key is None:
        return None
    parts = (header_value or "").split(None, 1)
    if not parts:
        return "missing"
    if parts[0].lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110)
        return "wrong_scheme"
    try:
        token = (parts[1].strip() if len(parts) == 2 else "").encode("latin-1")
    except UnicodeEncodeError:  # not bytes off the wire: cannot be the key
        return "invalid_token"
    return None if hmac.compare_digest(token, key) else "invalid_token"


def unauthorized(reason: str) -> tuple[dict[str, str], str]:
    """The 401 for a :func:`check_authorization` reason: its JSON body and ``WWW-Authenticate`` (RFC 6750)."""
    challenge = 'Bearer error="invalid_token"' if reason == "invalid_token" else "Bearer"
    return {"error": "unauthorized", "message": _UNAUTHORIZED[reason]}, challenge


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (``serve --host``) is this machine only: 127.0.0.0/8, ::1 or localhost."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def open_server_warning(config: ServerConfig, host: str, port: int) -> str | None:
    """What ``serve`` warns at start when it listens beyond this machine without a key, else None."""
    if config.api_key is not None or is_loopback_host(host):
        return None
    return (
        f"--host {host} listens beyond this machine and no API key is set: anyone who can reach port {port} "
        f"can use this server. Set one with {API_KEY_ENV}=KEY or {API_KEY_FILE_OPTION} FILE (docs/serve.md, 'API key')"
    )


#: uploads as (name, bytes) -> (uint8 rows on the device for the decodable ones, ``{position: error}``):
#: :class:`~imgclassify.decode.gpu.GpuBatchDecoder`'s call
BatchDecode = Callable[[Sequence[tuple[str, "bytes | None"]]], "Prepared"]


@dataclass(frozen=True)
class UploadDecoding:
    """Where the server decodes uploads: the choice ``predict`` makes for its loader.

    On CUDA with working nvJPEG and ``IMGCLASSIFY_GPU_DECODE`` not off
    (:func:`~imgclassify.decode.loaders.choose_loader`), the batcher thread decodes each gathered batch
    with :class:`~imgclassify.decode.gpu.GpuBatchDecoder`; everywhere else the request threads
    decode on the CPU, as ``classifier.decoder``. The fields are what the choice and the decoder
    take (tests give their own); None is the real thing: nvJPEG probed on the device, the
    process environment, a ``GpuBatchDecoder`` on the classifier's device.
    """

    nvjpeg_works: Callable[[torch.device], bool] | None = None
    environ: Mapping[str, str] | None = None
    decoder: Callable[[Classifier], BatchDecode] | None = None

    def batch_decoder(self, classifier: Classifier) -> BatchDecode | None:
        """The batcher's decoding stage for ``classifier``, or None: request threads decode on the CPU."""
        from imgclassify.decode.gpu import GpuBatchDecoder, gpu_decoding_available
        from imgclassify.decode.loaders import LoaderKind, choose_loader

        probe = self.nvjpeg_works or gpu_decoding_available
        if choose_loader(classifier.device, nvjpeg_works=probe, environ=self.environ) is not LoaderKind.GPU_DECODE:
            return None
        if self.decoder is not None:
            return self.decoder(classifier)
        return GpuBatchDecoder(classifier.decoder, classifier.device)


def require_flask() -> None:
    try:
        import flask  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imgclassify_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgclassify_http_request_duration_seconds", "Request latency by route", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )  # fmt: skip
        self.images = Counter("imgclassify_images", "Images received, by outcome", ["outcome"], registry=self.registry)
        self.batch_size = Histogram(
            "imgclassify_batch_size",
            "Images per forward pass",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.ready = Gauge("imgclassify_ready", "1 once the model is loaded and warmed up", registry=self.registry)
        self.rejected = Counter(
            "imgclassify_rejected_requests",
            "Requests refused before classification, by reason (overloaded: the queue was full)",
            ["reason"],
            registry=self.registry,
        )
        self.queued = Gauge("imgclassify_queued_images", "Images admitted and not yet answered", registry=self.registry)


class _State:
    """What the routes share: the classifier, its batcher, readiness.

    ``batch_decode`` None: request threads decode and submit uint8 batches. Otherwise they
    submit their uploads' (name, bytes) and the batcher decodes every gathered request's
    uploads in one ``batch_decode`` call before the forward pass.
    """

    def __init__(
        self, classifier: Classifier, config: ServerConfig, metrics: _Metrics, batch_decode: BatchDecode | None
    ) -> None:
        from imgclassify.server.batching import DynamicBatcher

        self.classifier = classifier
        self.config = config
        self.metrics = metrics
        self.ready = threading.Event()
        self.batch_decode = batch_decode
        assert config.max_queue is not None, "create_app resolves the config first (ServerConfig.resolved_for)"
        self.max_queue = config.max_queue
        self._queued = 0
        self._queue_lock = threading.Lock()
        settings: dict[str, Any] = {
            "max_batch_size": config.max_batch_size,
            "max_delay_s": config.max_batch_delay_ms / 1000.0,
            "on_batch": metrics.batch_size.observe,
        }
        self.batcher: DynamicBatcher[Any]
        if batch_decode is None:
            self.batcher = DynamicBatcher(classifier.forward_uint8, **settings)
        else:

            def decode_all(payloads: list[list[tuple[str, bytes]]]) -> Prepared:
                return batch_decode([item for uploads in payloads for item in uploads])

            self.batcher = DynamicBatcher(classifier.forward_uint8, prepare=decode_all, **settings)

    def admit(self, images: int) -> bool:
        """Count ``images`` in, unless that would pass ``max_queue`` (a request alone is always let in)."""
        with self._queue_lock:
            if self._queued and self._queued + images > self.max_queue:
                self.metrics.rejected.labels("overloaded").inc()
                return False
            self._queued += images
            self.metrics.queued.set(self._queued)
            return True

    def overloaded_message(self) -> str:
        return f"the server is busy ({self.max_queue} images waiting at most); retry shortly"

    def release(self, images: int) -> None:
        with self._queue_lock:
            self._queued -= images
            self.metrics.queued.set(self._queued)

    @property
    def decode(self) -> str:
        """Where uploads are decoded: ``"gpu"`` (in the batcher) or ``"cpu"`` (in the request threads)."""
        return "cpu" if self.batch_decode is None else "gpu"

    def warm_up(self) -> None:
        try:
            if self.batch_decode is not None:  # nvJPEG's first batched call sets it up
                self.batch_decode([("warm-up.jpg", _small_jpeg())])
            self.classifier.warm_up(1)
            if self.batcher.max_batch_size > 1:
                self.classifier.warm_up(self.batcher.max_batch_size)
        except Exception:  # pragma: no cover - reported by /readyz staying 503
            log.exception("warm-up failed")
            return
        self.ready.set()
        self.metrics.ready.set(1)
        log.info(
            "model %s ready on %s, uploads decoded on the %s", self.classifier.name, self.classifier.device,
            self.decode.upper(),
        )  # fmt: skip


def _small_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _error(status: int, error: str, message: str, **extra: Any) -> tuple[Response, int]:
    from flask import jsonify

    return jsonify({"error": error, "message": message, **extra}), status


def create_app(
    config: ServerConfig | None = None,
    *,
    classifier: Classifier | None = None,
    warm_up_async: bool = True,
    upload_decoding: UploadDecoding | None = None,
) -> Flask:
    """The Flask app. Loads the model now (unless ``classifier`` is given) and warms it up in the background.

    ``upload_decoding``: where uploads are decoded (default :class:`UploadDecoding`: as ``predict``).
    """
    require_flask()
    from flask import Flask, Request, g, jsonify, request
    from werkzeug.exceptions import HTTPException

    if not logging.getLogger("imgclassify").handlers:  # e.g. under a plain `gunicorn ...create_app()`
        configure_logging()
    if config is None:  # the entry point of a plain `gunicorn "imgclassify.server:create_app()"`
        config = ServerConfig.from_env()
        from imgclassify.system.runtime import configure_process

        configure_process()
    if classifier is None:
        from imgclassify.pipeline import load_classifier

        classifier = load_classifier(config.options)
    classifier.check_top_k(config.top_k)
    check_threshold(config.threshold)
    config = config.resolved_for(classifier.device)
    batch_decode = (upload_decoding or UploadDecoding()).batch_decoder(classifier)

    class InMemoryRequest(Request):
        """Uploads are parsed into memory (Werkzeug spools large files to disk by default)."""

        def _get_file_stream(self, *args: Any, **kwargs: Any) -> io.BytesIO:
            return io.BytesIO()

    app = Flask("imgclassify")
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_upload_mb * 1024 * 1024)
    app.config["MAX_FORM_MEMORY_SIZE"] = int(config.max_upload_mb * 1024 * 1024)
    app.config["MAX_FORM_PARTS"] = config.max_files + 16  # werkzeug's own guard; the route says 413 itself
    app.json.sort_keys = False  # type: ignore[attr-defined]
    metrics = _Metrics()
    state = _State(classifier, config, metrics, batch_decode)
    info = provenance(classifier, config, decode=state.decode)
    app.extensions["imgclassify"] = state
    if warm_up_async:
        threading.Thread(target=state.warm_up, name="imgclassify-warmup", daemon=True).start()
    else:
        state.warm_up()

    @app.before_request
    def _start_timer() -> None:
        g.start = time.perf_counter()
        g.images = 0

    key = None if config.api_key is None else config.api_key.encode("utf-8")

    @app.before_request
    def _check_api_key() -> tuple[Response, int] | None:
        # the same decision as BufferedWSGI's before the body; here for any other WSGI server
        reason = check_authorization(request.headers.get("Authorization"), key) if needs_api_key(request.path) else None
        if reason is None:
            return None
        payload, challenge = unauthorized(reason)
        response = jsonify(payload)
        response.headers["WWW-Authenticate"] = challenge
        return response, 401

    @app.after_request
    def _record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        elapsed = time.perf_counter() - g.get("start", time.perf_counter())
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(elapsed)
        images = f" {g.images} image(s)" if g.get("images") else ""
        log.info(
            '%s "%s %s" %s %.1fms%s',
            request.remote_addr,
            request.method,
            request.path,
            response.status_code,
            elapsed * 1000,
            images,
        )
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        messages = {
            404: "no such route: try GET / or POST /predict",
            405: f"method {request.method} not allowed here",
            413: f"upload larger than the limit of {config.max_upload_mb:g} MB or with more than {config.max_files} files",
        }
        return _error(
            status, (exc.name or "error").lower().replace(" ", "_"), messages.get(status, exc.description or "")
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "the server failed to handle this request; see its log")

    page = (resources.files("imgclassify") / "data" / "serve_page.html").read_text(encoding="utf-8")

    @app.get("/")
    def root() -> Response:
        # a browser (text/html preferred over JSON) gets the page; curl (*/*) and API clients the tutorial's JSON
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
            from flask import Response as FlaskResponse

            answer = FlaskResponse(page, mimetype="text/html")
        else:
            answer = jsonify(ROOT_MESSAGE)
        answer.headers["Vary"] = "Accept"
        return answer

    @app.get("/info")
    def info_route() -> Response:
        return jsonify(info)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        if state.ready.is_set():
            return jsonify({"status": "ready", "model": classifier.name, "device": str(classifier.device)}), 200
        return jsonify({"status": "loading", "model": classifier.name}), 503

    @app.get("/metrics")
    def metrics_route() -> Response:
        from flask import Response as FlaskResponse
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return FlaskResponse(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        limit = app.config["MAX_CONTENT_LENGTH"]
        if request.content_length is not None and request.content_length > limit:  # before reading the body
            return _error(
                413, "request_entity_too_large", f"upload larger than the limit of {config.max_upload_mb:g} MB"
            )
        uploads = request.files.getlist("file")
        if not uploads:
            return _error(400, "missing_file", "send the image as multipart/form-data in the field 'file'")
        if len(uploads) > config.max_files:
            return _error(413, "too_many_files", too_many_files_message(config.max_files))
        raw_top_k = request.args.get("top_k")
        try:
            top_k = int(raw_top_k) if raw_top_k is not None else config.top_k
            classifier.check_top_k(top_k)
        except ValueError:
            return _error(400, "bad_top_k", f"top_k must be an integer from 1 to {classifier.num_classes}")
        except ImgclassifyError as exc:  # the library's message, with the option as this API spells it
            return _error(400, "bad_top_k", exc.naming("top_k"))
        raw_threshold = request.args.get("threshold")
        try:
            threshold = float(raw_threshold) if raw_threshold is not None else config.threshold
            check_threshold(threshold)
        except ValueError:
            return _error(400, "bad_threshold", "threshold must be a probability from 0 to 1, such as 0.5")
        except ImgclassifyError as exc:
            return _error(400, "bad_threshold", exc.naming("threshold"))
        if not state.ready.wait(timeout=config.request_timeout_s):
            return _error(503, "not_ready", "the model is still loading; retry shortly (see /readyz)")
        g.images = len(uploads)
        counted = 0 if request.environ.get(ADMITTED_KEY) else len(uploads)  # behind asgi: counted there
        if counted and not state.admit(counted):
            answer, status = _error(503, "overloaded", state.overloaded_message())
            answer.headers["Retry-After"] = "1"
            return answer, status
        try:
            records = _classify(state, uploads, top_k, threshold)
        except (TimeoutError, FutureTimeout):  # the same class from Python 3.11 on
            return _error(504, "timeout", f"not classified within {config.request_timeout_s:g} s; send fewer files")
        finally:
            if counted:
                state.release(counted)
        for record in records:
            metrics.images.labels("failed" if "error" in record else "classified").inc()
        if len(uploads) == 1:
            record = records[0]
            return jsonify(record), 422 if "error" in record else 200
        return jsonify({"predictions": records, "model": classifier.name}), 200

    return app


def too_many_files_message(max_files: int) -> str:
    return (
        f"more than {max_files} files in one request: send them in several requests, "
        "or classify large sets with `imgclassify predict`"
    )


def tutorial_record(prediction: Prediction, filename: str | None, model: str, *, with_top_k: bool) -> dict[str, Any]:
    """The tutorial's JSON for one upload: ``class_id``/``class_name`` first, or ``error``/``message``."""
    record: dict[str, Any] = {"filename": filename} if filename is not None else {}
    if prediction.error is not None:
        return {**record, "error": "invalid_image", "message": prediction.error}
    best = prediction.top[0]
    record.update(
        class_id=best.class_id, class_name=best.class_name, wnid=best.wnid, probability=best.probability, model=model
    )
    if with_top_k:
        record["top_k"] = [c.to_dict() for c in prediction.top]
    if prediction.confident is not None:  # only with a threshold: the tutorial's answer is unchanged without
        record["confident"] = prediction.confident
    return record


def _classify(state: _State, uploads: list[Any], top_k: int, threshold: float | None = None) -> list[dict[str, Any]]:
    """Classify the uploads through the dynamic batcher, each with its own error, answers in order.

    The uploads go in chunks of at most the batcher's batch size, at most two chunks of one
    request in flight (the next decodes while the batcher runs the last): a request's memory
    follows the batch size, not its number of files. CPU decoding: decode a chunk here and
    submit the good ones' uint8 batch. GPU decoding: submit a chunk's bytes; the batcher
    decodes them with the other requests' and answers rows and errors.
    """
    import collections

    import torch

    classifier = state.classifier
    names = [os.path.basename(upload.filename or "") or None for upload in uploads]
    deadline = time.monotonic() + state.config.request_timeout_s
    step = state.batcher.max_batch_size
    errors: dict[int, str] = {}
    rows: list[torch.Tensor] = []
    in_flight: collections.deque[tuple[int, Future[Answer]]] = collections.deque()

    def collect() -> None:
        start, future = in_flight.popleft()
        answer = future.result(timeout=max(0.0, deadline - time.monotonic()))
        if answer.probs is not None:
            rows.append(answer.probs)
        errors.update({start + position: error for position, error in answer.errors.items()})

    for start in range(0, len(uploads), step):
        chunk = uploads[start : start + step]
        if state.batch_decode is not None:
            items = [(names[start + i] or "", upload.read()) for i, upload in enumerate(chunk)]
            in_flight.append((start, state.batcher.submit(items)))
        else:
            tensors = []
            for i, upload in enumerate(chunk):
                tensor, error = classifier.decoder.try_decode(upload.read())
                if tensor is None:
                    errors[start + i] = error or "cannot decode image"
                else:
                    tensors.append(tensor)
            if tensors:
                in_flight.append((start, state.batcher.submit(torch.stack(tensors))))
        while len(in_flight) >= 2:
            collect()
    while in_flight:
        collect()
    probs = torch.cat(rows) if rows else None
    predictions = classifier.renderer(top_k, threshold).render([name or "" for name in names], probs, errors)
    return [
        tutorial_record(prediction, name, classifier.name, with_top_k=top_k > 1)
        for prediction, name in zip(predictions, names, strict=True)
    ]


def provenance(classifier: Classifier, config: ServerConfig, *, decode: str = "cpu") -> dict[str, Any]:
    """What ``GET /info`` answers: the run manifest's model provenance, plus the server's settings.

    ``decode``: where uploads are decoded, ``"gpu"`` or ``"cpu"`` (see :class:`UploadDecoding`).
    """
    from imgclassify import __version__
    from imgclassify.results.manifest import describe_model, host, library_versions
    from imgclassify.system.devices import Backend

    return {
        "imgclassify": __version__,
        "engine": {"name": "server"},
        **describe_model(classifier.plan, classifier.label_set, device=str(classifier.device)),
        "versions": {
            "imgclassify": __version__,
            **library_versions(openvino=classifier.backend_kind is Backend.OPENVINO),
        },
        "host": host(),
        "server": {
            "top_k": config.top_k,
            "threshold": config.threshold,
            "max_upload_mb": config.max_upload_mb,
            "max_batch_size": config.max_batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms,
            "max_files": config.max_files,
            "max_queue": config.max_queue,
            "decode": decode,
            "requires_api_key": config.api_key is not None,
        },
    }


def configure_logging(level: int = logging.INFO) -> None:
    """One line per request on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s imgclassify: %(message)s"))
    for name in ("imgclassify", "imgclassify.server"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "imgclassify" else []
        logger.propagate = name != "imgclassify"
        logger.setLevel(level)
