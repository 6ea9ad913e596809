"""The server's configuration: :class:`ServerConfig`, from ``IMGCLASSIFY_*`` variables or one JSON object.

Two ways into a worker process's environment (docs/serve.md, "How the worker processes get their configuration"):

* ``IMGCLASSIFY_SERVER_CONFIG``: one versioned JSON object, :class:`WorkerConfig` (the whole
  :class:`ServerConfig`, request threads and worker processes), what ``imgclassify serve`` hands
  its workers. It wins: the individual variables it covers are ignored, with a warning.
* the individual variables (``IMGCLASSIFY_MODEL``, ``IMGCLASSIFY_TOP_K``, ...), one per setting,
  for a plain ``gunicorn "imgclassify.server:create_app()"`` configured by its environment.

The API key is never serialized: each process reads it from ``api_key_file``, else from
``IMGCLASSIFY_API_KEY`` (:func:`~imgclassify.server.auth.resolve_api_key`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.decode.imaging import DecodeMode, DecodeOptions
from imgclassify.decode.preprocess import Interpolation
from imgclassify.errors import UsageError
from imgclassify.options import ENV_PREFIX, ModelOptions, read_env
from imgclassify.server.auth import API_KEY_ENV, checked_key, read_api_key_file, resolve_api_key
from imgclassify.system.devices import Backend, Precision

if TYPE_CHECKING:
    import torch

log = logging.getLogger("imgclassify.server")

#: files per request by default (``--max-files``): far more than an interactive client sends; more
#: belongs to ``imgclassify predict``. Memory does not depend on it (requests go in batch-size passes)
DEFAULT_MAX_FILES = 500
#: the default ``--max-queue``: this many forward passes' worth of images waiting (see docs/serve.md)
QUEUE_BATCHES = 2
#: the one variable that carries a whole :class:`WorkerConfig` (JSON) to the worker processes
CONFIG_ENV = ENV_PREFIX + "SERVER_CONFIG"
#: the version of that JSON object's format: a worker reads only its own (bump it with any change)
CONFIG_VERSION = 2
THREADS_ENV = ENV_PREFIX + "THREADS"  # request threads per worker process, without CONFIG_ENV
WORKERS_ENV = ENV_PREFIX + "WORKERS"


@dataclass
class ServerConfig:
    """Everything ``create_app`` needs; ``from_env`` reads it from the environment (module docstring)."""

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
    #: repr, ``/info``, logs, metrics, error messages or :meth:`to_dict`; see :mod:`.auth`
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is None and self.api_key_file is not None:
            self.api_key = read_api_key_file(self.api_key_file)
        elif self.api_key is not None:
            self.api_key = checked_key(self.api_key, "the API key")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """``IMGCLASSIFY_SERVER_CONFIG`` if it is set (it wins), else the individual ``IMGCLASSIFY_<FIELD>`` variables."""
        env = os.environ if environ is None else environ
        if env.get(CONFIG_ENV, "").strip():
            return WorkerConfig.from_env(env).server
        values = read_env(env, _VARIABLES)
        values["api_key"] = resolve_api_key(values.get("api_key_file"), env)
        return cls(options=ModelOptions.from_env(env), **values)

    @property
    def max_upload_bytes(self) -> int:
        """The largest request body accepted (``max_upload_mb``), in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    def resolved_for(self, device: str | torch.device, *, default_threshold: float | None = None) -> ServerConfig:
        """This config with the defaults that depend on the device the model runs on filled in, and
        ``default_threshold`` (a fitted model's) when no threshold was given."""
        from imgclassify.decode.loading import resolve_batch_size

        option = "--max-batch-size (IMGCLASSIFY_MAX_BATCH_SIZE)"
        batch = resolve_batch_size(self.max_batch_size, device, option)
        queue = self.max_queue if self.max_queue is not None else QUEUE_BATCHES * batch
        if queue < 1:
            raise UsageError(f"--max-queue (IMGCLASSIFY_MAX_QUEUE) must be at least 1, got {queue}")
        if self.max_files < 1:
            raise UsageError(f"--max-files (IMGCLASSIFY_MAX_FILES) must be at least 1, got {self.max_files}")
        threshold = self.threshold if self.threshold is not None else default_threshold
        return replace(self, max_batch_size=batch, max_queue=queue, threshold=threshold)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON values (:meth:`from_dict` turns them back), but the API key: never serialized."""
        return _SERVER.dump(self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, where: str = "server"
    ) -> ServerConfig:
        """The config :meth:`to_dict` gave, every field of its type, none missing, none unknown
        (else a :class:`UsageError` naming it). The API key, never in ``data``: ``api_key_file``'s
        content, else ``IMGCLASSIFY_API_KEY`` in ``environ`` (default: the process's), as ``from_env``."""
        values = _SERVER.read(_Fields(data, where))  # all of it, before the key: a bad setting fails first
        return cls(**values, api_key=resolve_api_key(values["api_key_file"], environ))


#: the individual variables' types, one per field (``IMGCLASSIFY_TOP_K``, ...; the model's are ModelOptions')
_VARIABLES: dict[str, type] = {
    "top_k": int, "max_upload_mb": float, "max_batch_size": int, "max_batch_delay_ms": float, "max_files": int,
    "max_queue": int, "request_timeout_s": float, "read_timeout_s": float, "threshold": float, "api_key_file": str,
}  # fmt: skip


def config_to_env(config: ServerConfig) -> dict[str, str]:
    """The individual ``IMGCLASSIFY_*`` variables that ``ServerConfig.from_env`` turns back into ``config``
    (what a gunicorn deployment configured by its environment sets; ``imgclassify serve`` passes
    :class:`WorkerConfig` instead).

    The API key: with ``api_key_file``, only the path (``IMGCLASSIFY_API_KEY`` empty: each worker
    reads the file); otherwise ``IMGCLASSIFY_API_KEY``, where ``serve`` found it in the first place.
    """
    env = config.options.to_env()
    for name in _VARIABLES:
        value = getattr(config, name)
        env[ENV_PREFIX + name.upper()] = "" if value is None else str(value)
    env[API_KEY_ENV] = _key_variable(config)
    return env


def superseded_variables() -> list[str]:
    """The individual variables that ``IMGCLASSIFY_SERVER_CONFIG`` replaces: ignored when it is set.

    Not ``IMGCLASSIFY_API_KEY`` (the key is never serialized) nor ``IMGCLASSIFY_OFFLINE`` (it
    turns downloads off process-wide, whatever the options say).
    """
    model = [name for name in ModelOptions().to_env() if name != ENV_PREFIX + "OFFLINE"]
    return [*model, *(ENV_PREFIX + name.upper() for name in _VARIABLES), THREADS_ENV, WORKERS_ENV]


def _key_variable(config: ServerConfig) -> str:
    """``IMGCLASSIFY_API_KEY`` for the workers: empty with a key file (each reads the file), else the key."""
    return "" if config.api_key_file is not None or config.api_key is None else config.api_key


@dataclass(frozen=True)
class WorkerConfig:
    """What each worker process of ``imgclassify serve`` is started with: one JSON object in
    ``IMGCLASSIFY_SERVER_CONFIG`` (:meth:`export`), read back by :meth:`from_env`."""

    server: ServerConfig
    threads: int = 8  # request threads per process
    workers: int = 1  # worker processes in all (the WSGI environ's ``wsgi.multiprocess``)

    def to_json(self) -> str:
        """The versioned JSON object: ``{"version": 1, "threads": ..., "workers": ..., "server": {...}}``."""
        data = {
            "version": CONFIG_VERSION,
            "threads": self.threads,
            "workers": self.workers,
            "server": self.server.to_dict(),
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """:meth:`to_json`'s object back, or a :class:`UsageError` that says what is wrong with it
        (not JSON, another version of the format, a setting missing, unknown or of the wrong type)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise _bad(f"not valid JSON ({exc})") from None
        top = _Fields(data, "")
        version = data.get("version")
        if version != CONFIG_VERSION or isinstance(version, bool):
            from imgclassify import __version__

            found = "no version" if version is None else f"version {_shown(version)}"
            raise _bad(
                f"{found} of the format, and imgclassify {__version__} reads version {CONFIG_VERSION} only: "
                f"start the workers with the same imgclassify as `imgclassify serve`, or unset {CONFIG_ENV} "
                "and configure by the individual IMGCLASSIFY_* variables (docs/serve.md)"
            )
        top.read("version", INTEGER)
        threads, workers = top.integer("threads", at_least=1), top.integer("workers", at_least=1)
        server = top.read("server", ANY)
        top.done()
        return cls(ServerConfig.from_dict(server, environ=environ), threads=threads, workers=workers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """From ``IMGCLASSIFY_SERVER_CONFIG`` when it is set: it wins, and the individual variables it
        covers (:func:`superseded_variables`) are ignored with a warning. Else from those variables
        (``IMGCLASSIFY_THREADS`` and ``IMGCLASSIFY_WORKERS`` for the threads and processes)."""
        env = os.environ if environ is None else environ
        text = env.get(CONFIG_ENV, "").strip()
        if not text:
            counts = read_env(env, {"threads": int, "workers": int})
            return cls(ServerConfig.from_env(env), **counts)
        ignored = [name for name in superseded_variables() if env.get(name, "").strip()]
        if ignored:
            log.warning("%s ignored: %s gives the whole configuration", ", ".join(ignored), CONFIG_ENV)
        return cls.from_json(text, environ=env)

    def export(self, environ: MutableMapping[str, str]) -> None:
        """Put this configuration in ``environ`` for the worker processes: ``IMGCLASSIFY_SERVER_CONFIG``,
        and ``IMGCLASSIFY_API_KEY`` as :func:`config_to_env` sets it; the individual variables it
        supersedes are removed (they would be ignored, with a warning in every worker)."""
        for name in superseded_variables():
            environ.pop(name, None)
        environ[CONFIG_ENV] = self.to_json()
        environ[API_KEY_ENV] = _key_variable(self.server)


def _bad(message: str) -> UsageError:
    return UsageError(f"{CONFIG_ENV}: {message}")


def _shown(value: object) -> str:
    """A JSON value as an error message shows it: scalars as written, containers by their kind."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return json.dumps(value)[:60]


class _Wrong(Exception):
    """A JSON value that is not of the kind a field needs."""


@dataclass(frozen=True)
class _Kind:
    """How the values of one type of field are written in JSON (``dump``) and read back (``load``,
    which raises :class:`_Wrong` for a value of another kind). ``what``: the kind, for messages."""

    what: str
    load: Callable[[Any], Any]
    dump: Callable[[Any], Any] = lambda value: value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Wrong
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Wrong
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Wrong
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Wrong
    return value


def _triple(value: Any) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise _Wrong
    first, second, third = (_number(v) for v in value)
    return first, second, third


def _choice(kind: type[Enum]) -> _Kind:
    def load(value: Any) -> Enum:
        try:
            return kind(_text(value))
        except ValueError:
            raise _Wrong from None

    return _Kind("one of " + ", ".join(str(member.value) for member in kind), load, lambda member: member.value)


def _optional(kind: _Kind) -> _Kind:
    return _Kind(
        f"{kind.what} or null",
        lambda value: None if value is None else kind.load(value),
        lambda value: None if value is None else kind.dump(value),
    )


INTEGER = _Kind("an integer", _integer)
NUMBER = _Kind("a number", _number)
FLAG = _Kind("true or false", _flag)
TEXT = _Kind("a string", _text)
PATH = _Kind("a string (a path)", lambda value: Path(_text(value)), str)
TRIPLE = _Kind("a list of three numbers", _triple, list)
ANY = _Kind("any JSON value", lambda value: value)  # checked by its reader


class _Object:
    """A dataclass as a JSON object: each field by its kind in ``kinds`` (nested: another ``_Object``).

    Every field needs a kind (``skip``: those never serialized): a field added to the dataclass
    without one fails loudly here, and in tests/test_server_config.py, rather than be lost on its
    way to the workers. Kinds for fields the dataclass does not have are not used.
    """

    def __init__(self, cls: type, kinds: Mapping[str, _Kind | _Object], *, skip: frozenset[str] = frozenset()) -> None:
        self.cls, self.kinds, self.skip = cls, kinds, skip

    def names(self) -> list[str]:
        names = [f.name for f in fields(self.cls) if f.name not in self.skip]
        for name in names:
            if name not in self.kinds:
                raise TypeError(f"{self.cls.__name__}.{name} has no JSON form: give it one in {__name__}")
        return names

    def dump(self, value: object) -> dict[str, Any]:
        return {name: self.kinds[name].dump(getattr(value, name)) for name in self.names()}

    def read(self, data: _Fields) -> dict[str, Any]:
        """The fields' values, each of its kind, none missing and none unknown in ``data``."""
        values = {name: data.read(name, self.kinds[name]) for name in self.names()}
        data.done()
        return values


_DECODE = _Object(DecodeOptions, {"mode": _choice(DecodeMode), "allow_truncated": FLAG, "max_pixels": INTEGER})
_MODEL = _Object(ModelOptions, {
    "model": _optional(TEXT), "weights": _optional(PATH), "labels": _optional(PATH), "device": TEXT,
    "precision": _choice(Precision), "backend": _choice(Backend), "decode": _DECODE, "offline": FLAG,
    "resize": _optional(INTEGER), "crop": _optional(INTEGER), "interpolation": _optional(_choice(Interpolation)),
    "mean": _optional(TRIPLE), "std": _optional(TRIPLE), "multi_label": _optional(FLAG),
})  # fmt: skip
_SERVER = _Object(ServerConfig, {
    "options": _MODEL, "top_k": INTEGER, "max_upload_mb": NUMBER, "max_batch_size": _optional(INTEGER),
    "max_batch_delay_ms": NUMBER, "max_files": INTEGER, "max_queue": _optional(INTEGER),
    "request_timeout_s": NUMBER, "read_timeout_s": NUMBER, "threshold": _optional(NUMBER),
    "api_key_file": _optional(TEXT),
}, skip=frozenset({"api_key"}))  # fmt: skip


class _Fields:
    """One JSON object of the serialized config, read field by field (``where``: its path, for messages)."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise _bad(f"{where or 'the value'} must be a JSON object, got {_shown(data)}")
        self.data: dict[str, Any] = data
        self.where = where
        self.seen: set[str] = set()

    def _name(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def read(self, name: str, kind: _Kind | _Object) -> Any:
        if name not in self.data:
            raise _bad(f"{self._name(name)} is missing")
        self.seen.add(name)
        value = self.data[name]
        if isinstance(kind, _Object):
            return kind.cls(**kind.read(_Fields(value, self._name(name))))
        try:
            return kind.load(value)
        except _Wrong:
            raise _bad(f"{self._name(name)} must be {kind.what}, got {_shown(value)}") from None

    def integer(self, name: str, *, at_least: int) -> int:
        value: int = self.read(name, INTEGER)
        if value < at_least:
            raise _bad(f"{self._name(name)} must be at least {at_least}, got {value}")
        return value

    def done(self) -> None:
        """Refuse the keys nothing read: a setting this version does not know is not silently dropped."""
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            names = ", ".join(self._name(name) for name in unknown)
            raise _bad(f"unknown setting(s) {names} for version {CONFIG_VERSION} of the format")
