"""`imgclassify serve`'s HTTP server: an event loop reads whole request bodies, threads run the app.

Slow clients cost a thread under a threaded WSGI server (gunicorn's ``gthread``): a client that
sends its headers and part of a body, then stalls, holds a request thread until it finishes, so
a few dozen of them starve every normal request. Here uvicorn (h11) owns the sockets and
:class:`BufferedWSGI` reads each body in the event loop, in memory, with a read timeout, and
only hands complete requests to a pool of ``threads`` threads that run the unchanged Flask app
(they share one model and one dynamic batcher, as before). Answers decided here are JSON:

* 413 ``request_entity_too_large`` from ``Content-Length`` before any of the body is read (or as
  soon as a chunked body passes the limit);
* 413 ``too_many_files`` as soon as a multipart body has passed ``max_files`` parts (counted
  while it arrives, so a request of thousands of tiny files is refused before it is all read);
* 408 ``request_timeout`` when the client sends nothing for ``read_timeout_s`` in the middle of
  its body; a client that stalls in its headers cannot be answered (no request yet): its
  connection is closed after the same time;
* 401 ``unauthorized`` when an API key is set and the request for a route that needs it does
  not carry it (:func:`~imgclassify.server.check_authorization`), before any of the body is
  read, so an unauthenticated client cannot upload anything; the connection is closed.

``imgclassify serve --workers N`` runs N such processes (uvicorn's supervisor, each with its
own model), each configured by :func:`app_from_env` from the one ``IMGCLASSIFY_SERVER_CONFIG``
variable that :func:`run` sets (:class:`~imgclassify.server.config.WorkerConfig`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from uvicorn.protocols.http.h11_impl import H11Protocol

from imgclassify.server.answers import ADMITTED_KEY, too_many_files_message
from imgclassify.server.app import configure_logging, create_app
from imgclassify.server.auth import check_authorization, needs_api_key, unauthorized
from imgclassify.server.config import THREADS_ENV as THREADS_ENV
from imgclassify.server.config import WORKERS_ENV as WORKERS_ENV
from imgclassify.server.config import ServerConfig, WorkerConfig
from imgclassify.server.config import config_to_env as config_to_env

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("imgclassify.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Admission(Protocol):
    """The queue bound of prediction requests (the server's :class:`~imgclassify.server.state.AppState`)."""

    def admit(self, images: int) -> bool: ...

    def release(self, images: int) -> None: ...

    def overloaded_message(self) -> str: ...


class _Rejected(Exception):
    def __init__(self, status: int, error: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.headers = headers or []


class BufferedWSGI:
    """ASGI app: read the body in the event loop (limit, read timeout), then run ``wsgi_app`` in a thread."""

    def __init__(
        self,
        wsgi_app: WSGIApp,
        *,
        max_body: int,
        read_timeout_s: float,
        threads: int = 8,
        multiprocess: bool = False,
        on_rejected: Callable[[str, str, int, float], None] | None = None,
        api_key: str | None = None,
        max_files: int | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.max_files = max_files
        self.admission = admission
        self.wsgi_app = wsgi_app
        self._key = None if api_key is None else api_key.encode("utf-8")  # no repr: the object's default
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.multiprocess = multiprocess
        self.on_rejected = on_rejected
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imgclassify-request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            self._check_api_key(scope)  # before any of the body is read
            body, parts = await self._read_body(scope, receive)
            images = self._admit(scope, parts)  # before waiting for a request thread
        except _Rejected as rejected:
            payload = {"error": rejected.error, "message": rejected.message}
            await _send_json(send, rejected.status, payload, close=True, extra=rejected.headers)
            elapsed = time.perf_counter() - start
            client = scope.get("client")
            log.info(
                '%s "%s %s" %s %.1fms',
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                rejected.status,
                elapsed * 1000,
            )
            if self.on_rejected is not None:
                self.on_rejected(scope["path"], scope["method"], rejected.status, elapsed)
            return
        except _Disconnected:
            return
        environ = _environ(scope, body, multiprocess=self.multiprocess)
        if images:
            environ[ADMITTED_KEY] = images  # the app does not count them a second time
        loop = asyncio.get_running_loop()
        try:
            status, headers, content = await loop.run_in_executor(self.executor, _run_wsgi, self.wsgi_app, environ)
        except Exception:  # the Flask app answers its own errors; this is a bug in the glue
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            message = "the server failed to handle this request; see its log"
            await _send_json(send, 500, {"error": "internal_error", "message": message})
            return
        finally:
            if images and self.admission is not None:
                self.admission.release(images)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _admit(self, scope: Scope, parts: int | None) -> int:
        """Count a prediction request's images into the queue, or refuse it (503) when full: here,
        before the request waits for a thread, so requests never pile up unbounded in front of the
        app. Returns the images counted (0: not a prediction request, or no admission set)."""
        if self.admission is None or scope["method"] != "POST" or scope["path"] != "/predict":
            return 0
        images = max(1, parts or 0)
        if not self.admission.admit(images):
            message = self.admission.overloaded_message()
            raise _Rejected(503, "overloaded", message, [(b"retry-after", b"1")])
        return images

    def _check_api_key(self, scope: Scope) -> None:
        if self._key is None or not needs_api_key(scope["path"]):
            return
        values = [value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"]
        reason = check_authorization(",".join(values) if values else None, self._key)  # joined as in _environ
        if reason is not None:
            payload, challenge = unauthorized(reason)
            raise _Rejected(401, payload["error"], payload["message"], [(b"www-authenticate", challenge.encode())])

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, int | None]:
        """The whole body, and its multipart parts (None: not multipart, or not counted)."""
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _Rejected(400, "bad_request", "Content-Length is not a number") from None
        if length is not None and length > self.max_body:  # before reading any of the body
            raise self._too_large()
        parts = _PartCounter.for_headers(scope["headers"]) if self.max_files is not None else None
        body = bytearray()
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout_s)
            except asyncio.TimeoutError:
                raise _Rejected(
                    408,
                    "request_timeout",
                    f"the request body did not arrive: nothing received for {self.read_timeout_s:g} s",
                ) from None
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            body += chunk
            if len(body) > self.max_body:
                raise self._too_large()
            if parts is not None and self.max_files is not None and parts.feed(chunk) > self.max_files:
                raise _Rejected(413, "too_many_files", too_many_files_message(self.max_files))
            more = message.get("more_body", False)
        return bytes(body), parts.delimiters if parts is not None else None

    def _too_large(self) -> _Rejected:
        mb = self.max_body / (1024 * 1024)
        return _Rejected(413, "request_entity_too_large", f"upload larger than the limit of {mb:g} MB")


class _Disconnected(Exception):
    pass


class _PartCounter:
    """Counts the parts of a multipart body as it arrives: the ``--BOUNDARY`` delimiters seen so
    far, less the closing one (RFC 7578; a boundary never occurs inside a part)."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.tail = b""
        self.delimiters = 0

    @classmethod
    def for_headers(cls, headers: Iterable[tuple[bytes, bytes]]) -> _PartCounter | None:
        for name, value in headers:
            if name == b"content-type" and value.lower().startswith(b"multipart/"):
                for param in value.split(b";")[1:]:
                    key, _, raw = param.strip().partition(b"=")
                    if key.strip().lower() == b"boundary" and raw.strip().strip(b'"'):
                        return cls(raw.strip().strip(b'"'))
        return None

    def feed(self, chunk: bytes) -> int:
        """The parts begun so far, after ``chunk``: delimiters followed by anything but ``--``
        (which closes the body), each counted once its two next bytes have arrived."""
        data = self.tail + chunk  # the tail: bytes that may still begin an undecided delimiter
        size = len(self.delimiter)
        keep_from = max(0, len(data) - size + 1)  # a delimiter beginning here or later is not whole yet
        position = data.find(self.delimiter)
        while position != -1:
            if position + size + 2 > len(data):  # whole, but its next two bytes are still to come
                keep_from = position
                break
            if data[position + size : position + size + 2] != b"--":
                self.delimiters += 1
            position = data.find(self.delimiter, position + 1)
        self.tail = data[keep_from:]
        return self.delimiters


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], *, close: bool = False, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    if close:  # the rest of the body is not wanted: do not read it to reuse the connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _environ(scope: Scope, body: bytes, *, multiprocess: bool) -> dict[str, Any]:
    """PEP 3333 environ for a complete request."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").upper().replace("-", "_"), raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "CONTENT_LENGTH":
            continue
        key = "HTTP_" + name
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _run_wsgi(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call the WSGI app in a request thread; the answer is collected in memory (JSON, small)."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    chunks: list[bytes] = []
    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return int(status.split(" ", 1)[0]), encoded, b"".join(chunks)


def wrap(app: Flask, config: ServerConfig, *, threads: int, multiprocess: bool = False) -> BufferedWSGI:
    """``create_app``'s Flask app behind :class:`BufferedWSGI`, its rejections counted in ``/metrics``."""
    state = app.extensions["imgclassify"]
    adapter = app.url_map.bind("localhost")

    def on_rejected(path: str, method: str, status: int, elapsed: float) -> None:
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
            route = rule.rule
        except Exception:
            route = "<unmatched>"
        state.metrics.observe_request(route, method, status, elapsed)

    return BufferedWSGI(
        app.wsgi_app,
        max_body=config.max_upload_bytes,
        read_timeout_s=config.read_timeout_s,
        threads=threads,
        multiprocess=multiprocess,
        on_rejected=on_rejected,
        max_files=config.max_files,
        admission=state,
        api_key=config.api_key,
    )


def app_from_env() -> BufferedWSGI:
    """The ASGI app for one worker process (uvicorn factory), configured by :meth:`WorkerConfig.from_env`:
    ``IMGCLASSIFY_SERVER_CONFIG`` as :func:`run` sets it, else the individual ``IMGCLASSIFY_*`` variables."""
    worker = WorkerConfig.from_env()
    config = worker.server
    HeaderTimeoutProtocol.timeout_s = config.read_timeout_s
    from imgclassify.system.runtime import configure_process

    configure_process()  # this worker process's entry point: allocator and threads, once
    return wrap(create_app(config), config, threads=worker.threads, multiprocess=worker.workers > 1)


def run(config: ServerConfig, *, host: str, port: int, threads: int, workers: int, quiet: bool) -> None:
    """Serve with uvicorn (h11), ``workers`` processes; blocks until SIGINT/SIGTERM (graceful)."""
    WorkerConfig(config, threads=threads, workers=workers).export(os.environ)  # read by every app_from_env
    level = logging.WARNING if quiet else logging.INFO
    configure_logging(level)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it
    # found: a no-op one makes `serve` exit 0 after a graceful stop, as under gunicorn
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _run_uvicorn(host=host, port=port, workers=workers, level=level)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(sig: int, frame: Any) -> None:
    log.info("stopped by signal %d", sig)


def _run_uvicorn(*, host: str, port: int, workers: int, level: int) -> None:
    import uvicorn

    uvicorn.run(
        "imgclassify.server.asgi:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http="imgclassify.server.asgi:HeaderTimeoutProtocol",
        loop="asyncio",
        lifespan="on",
        interface="asgi3",
        access_log=False,
        log_config=None,
        log_level=level,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=5,
        server_header=False,
    )


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose first request head does not arrive in time."""

    timeout_s: float = ServerConfig.read_timeout_s  # set per worker process by app_from_env

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        if self.cycle is None and not self.transport.is_closing():  # no complete request head yet
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)
