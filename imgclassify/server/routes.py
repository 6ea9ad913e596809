"""The Flask app's routes, hooks and error handlers: plain functions, each given the state it needs.

Routes: ``GET /`` (the tutorial's hint, or the page for a browser), ``POST /predict`` (multipart
field ``file``, repeated for several images; ``?top_k=K``, ``?threshold=P``), ``GET /info``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics``. :func:`register` puts them on an app for one
:class:`~imgclassify.server.state.AppState`. Every error is JSON with the right status; uploads
stay in memory and never reach the disk.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import time
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from imgclassify.errors import ImgclassifyError
from imgclassify.results.records import Prediction
from imgclassify.results.render import check_threshold
from imgclassify.server.answers import ADMITTED_KEY, ROOT_MESSAGE, too_many_files_message
from imgclassify.server.auth import check_authorization, needs_api_key, unauthorized

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch

    from imgclassify.pipeline import Classifier
    from imgclassify.server.batching import Answer
    from imgclassify.server.config import ServerConfig
    from imgclassify.server.metrics import Metrics
    from imgclassify.server.state import AppState

log = logging.getLogger("imgclassify.server")


class InMemoryRequest(Request):
    """Uploads are parsed into memory (Werkzeug spools large files to disk by default)."""

    def _get_file_stream(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO()


def register(app: Flask, state: AppState) -> None:
    """Set ``app`` up for ``state``'s (resolved) config: limits, hooks, error handlers and routes."""
    config = state.config
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_FORM_MEMORY_SIZE"] = config.max_upload_bytes
    app.config["MAX_FORM_PARTS"] = config.max_files + 16  # werkzeug's own guard; the route says 413 itself
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.before_request(start_timer)
    app.before_request(partial(check_api_key, state.key))
    app.after_request(partial(record_request, state.metrics))
    app.register_error_handler(HTTPException, partial(http_error, config))
    app.register_error_handler(Exception, unexpected)
    page = (resources.files("imgclassify") / "data" / "serve_page.html").read_text(encoding="utf-8")
    info = provenance(state.classifier, config, decode=state.decode)
    app.add_url_rule("/", "root", partial(root, page), methods=["GET"])
    app.add_url_rule("/info", "info", partial(info_route, info), methods=["GET"])
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", partial(readyz, state), methods=["GET"])
    app.add_url_rule("/metrics", "metrics", partial(metrics_route, state.metrics), methods=["GET"])
    app.add_url_rule("/predict", "predict", partial(predict, state), methods=["POST"])


# -- hooks and error handlers --------------------------------------------------------------------


def start_timer() -> None:
    g.start = time.perf_counter()
    g.images = 0


def check_api_key(key: bytes | None) -> tuple[Response, int] | None:
    """401 unless the request may go on: the same decision as the ASGI front's before the body,
    here for any other WSGI server. ``key``: the API key's bytes, None when none is set."""
    reason = check_authorization(request.headers.get("Authorization"), key) if needs_api_key(request.path) else None
    if reason is None:
        return None
    payload, challenge = unauthorized(reason)
    response = jsonify(payload)
    response.headers["WWW-Authenticate"] = challenge
    return response, 401


def record_request(metrics: Metrics, response: Response) -> Response:
    """Count and log the answered request: one line per request on stderr."""
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    elapsed = time.perf_counter() - g.get("start", time.perf_counter())
    metrics.observe_request(route, request.method, response.status_code, elapsed)
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


def http_error(config: ServerConfig, exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    messages = {
        404: "no such route: try GET / or POST /predict",
        405: f"method {request.method} not allowed here",
        413: f"upload larger than the limit of {config.max_upload_mb:g} MB or with more than {config.max_files} files",
    }
    return error(status, (exc.name or "error").lower().replace(" ", "_"), messages.get(status, exc.description or ""))


def unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error(500, "internal_error", "the server failed to handle this request; see its log")


def error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    """The JSON error answer: ``{"error": code, "message": message, ...}`` with ``status``."""
    return jsonify({"error": code, "message": message, **extra}), status


# -- the routes ----------------------------------------------------------------------------------


def root(page: str) -> Response:
    """A browser (text/html preferred over JSON) gets the page; curl (*/*) and API clients the tutorial's JSON."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        answer = Response(page, mimetype="text/html")
    else:
        answer = jsonify(ROOT_MESSAGE)
    answer.headers["Vary"] = "Accept"
    return answer


def info_route(info: dict[str, Any]) -> Response:
    """The provenance of the model served (:func:`provenance`), computed once at start."""
    return jsonify(info)


def healthz() -> Response:
    return jsonify({"status": "ok"})


def readyz(state: AppState) -> tuple[Response, int]:
    classifier = state.classifier
    if state.ready.is_set():
        return jsonify({"status": "ready", "model": classifier.name, "device": str(classifier.device)}), 200
    return jsonify({"status": "loading", "model": classifier.name}), 503


def metrics_route(metrics: Metrics) -> Response:
    text, content_type = metrics.exposition()
    return Response(text, mimetype=content_type)


def predict(state: AppState) -> tuple[Response, int]:
    config, classifier = state.config, state.classifier
    if request.content_length is not None and request.content_length > config.max_upload_bytes:  # before the body
        return error(413, "request_entity_too_large", f"upload larger than the limit of {config.max_upload_mb:g} MB")
    uploads = request.files.getlist("file")
    if not uploads:
        return error(400, "missing_file", "send the image as multipart/form-data in the field 'file'")
    if len(uploads) > config.max_files:
        return error(413, "too_many_files", too_many_files_message(config.max_files))
    raw_top_k = request.args.get("top_k")
    try:
        top_k = int(raw_top_k) if raw_top_k is not None else config.top_k
        classifier.check_top_k(top_k)
    except ValueError:
        return error(400, "bad_top_k", f"top_k must be an integer from 1 to {classifier.num_classes}")
    except ImgclassifyError as exc:  # the library's message, with the option as this API spells it
        return error(400, "bad_top_k", exc.naming("top_k"))
    raw_threshold = request.args.get("threshold")
    try:
        threshold = float(raw_threshold) if raw_threshold is not None else config.threshold
        check_threshold(threshold)
    except ValueError:
        return error(400, "bad_threshold", "threshold must be a probability from 0 to 1, such as 0.5")
    except ImgclassifyError as exc:
        return error(400, "bad_threshold", exc.naming("threshold"))
    if not state.ready.wait(timeout=config.request_timeout_s):
        return error(503, "not_ready", "the model is still loading; retry shortly (see /readyz)")
    g.images = len(uploads)
    counted = 0 if request.environ.get(ADMITTED_KEY) else len(uploads)  # behind asgi: counted there
    if counted and not state.admit(counted):
        answer, status = error(503, "overloaded", state.overloaded_message())
        answer.headers["Retry-After"] = "1"
        return answer, status
    try:
        records = classify(state, uploads, top_k, threshold)
    except (TimeoutError, FutureTimeout):  # the same class from Python 3.11 on
        return error(504, "timeout", f"not classified within {config.request_timeout_s:g} s; send fewer files")
    finally:
        if counted:
            state.release(counted)
    for answer_record in records:
        state.metrics.images.labels("failed" if "error" in answer_record else "classified").inc()
    if len(uploads) == 1:
        return jsonify(records[0]), 422 if "error" in records[0] else 200
    return jsonify({"predictions": records, "model": classifier.name}), 200


# -- classifying a request's uploads -------------------------------------------------------------


def classify(state: AppState, uploads: list[Any], top_k: int, threshold: float | None = None) -> list[dict[str, Any]]:
    """Classify the uploads through the dynamic batcher, each with its own error, answers in order.

    The uploads go in chunks of at most the batcher's batch size, at most two chunks of one
    request in flight (the next decodes while the batcher runs the last): a request's memory
    follows the batch size, not its number of files. CPU decoding: decode a chunk here and
    submit the good ones' uint8 batch. GPU decoding: submit a chunk's bytes; the batcher
    decodes them with the other requests' and answers rows and errors.
    """
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
        errors.update({start + position: message for position, message in answer.errors.items()})

    for start in range(0, len(uploads), step):
        chunk = uploads[start : start + step]
        if state.batch_decode is not None:
            items = [(names[start + i] or "", upload.read()) for i, upload in enumerate(chunk)]
            in_flight.append((start, state.batcher.submit(items)))
        else:
            tensors = []
            for i, upload in enumerate(chunk):
                tensor, decode_error = classifier.decoder.try_decode(upload.read())
                if tensor is None:
                    errors[start + i] = decode_error or "cannot decode image"
                else:
                    tensors.append(tensor)
            if tensors:
                in_flight.append((start, state.batcher.submit(torch.stack(tensors))))
        while len(in_flight) >= 2:
            collect()
    while in_flight:
        collect()
    probs = torch.cat(rows) if rows else None
    renderer = classifier.renderer(top_k, threshold)
    predictions = renderer.render([name or "" for name in names], probs, errors)
    return [
        tutorial_record(prediction, name, classifier.name, with_top_k=renderer.lists_candidates)
        for prediction, name in zip(predictions, names, strict=True)
    ]


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


def provenance(classifier: Classifier, config: ServerConfig, *, decode: str = "cpu") -> dict[str, Any]:
    """What ``GET /info`` answers: the run manifest's model provenance, plus the server's settings.

    ``decode``: where uploads are decoded, ``"gpu"`` or ``"cpu"`` (see :class:`~imgclassify.server.state.UploadDecoding`).
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
