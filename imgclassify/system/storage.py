"""Where the data lives: object storage (``s3://``, ``gs://``, ``az://``) and ``http(s)://`` URLs.

:func:`is_url` tells a URL from a local path (``C:\\photos`` and ``photos/a.jpg`` are paths);
a :class:`Storage` lists, reads and writes URLs. Object stores go through fsspec and the
filesystem each scheme needs (s3fs, gcsfs, adlfs: the ``s3``, ``gcs`` and ``azure`` extras),
configured the way each is configured anyway: for S3 the AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...), ``~/.aws`` profiles (``AWS_PROFILE``),
instance roles; plus the options given (``--storage-option KEY=VALUE``, passed to the
filesystem as keyword arguments). ``http(s)://`` is read with the standard library (no extra),
with a timeout and a size limit.

The options can hold secrets: a :class:`Storage` shows only their keys (``repr``, the
manifest), never their values. Importing this module imports neither fsspec nor a filesystem.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import ImageError, ImgclassifyError, UsageError
from imgclassify.extras import install_hint

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: URL scheme -> the fsspec protocol that serves it (None: ``http(s)``, read with urllib)
SCHEMES: dict[str, str | None] = {
    "s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "abfs", "abfs": "abfs", "abfss": "abfs",
    "http": None, "https": None,
}  # fmt: skip
#: fsspec protocol -> (the module that implements it, the extra that installs it)
FILESYSTEMS: dict[str, tuple[str, str]] = {"s3": ("s3fs", "s3"), "gcs": ("gcsfs", "gcs"), "abfs": ("adlfs", "azure")}
#: the largest object read as one input: a bigger one is an error record (memory stays bounded)
MAX_OBJECT_BYTES = 1 << 30
#: seconds an ``http(s)://`` read may wait for the server (connect, and between bytes)
HTTP_TIMEOUT = 30.0
#: characters that make an object-store URL a glob pattern (``?`` too: object URLs have no query)
GLOB_CHARS = re.compile(r"[*?\[]")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(ImgclassifyError):
    """Object storage cannot be used: its extra is missing, a listing failed (exit code 2)."""

    exit_code = 2


def url_scheme(path: str) -> str | None:
    """The scheme of a URL this package reads (``"s3"``, ``"https"``), lower-cased; None for a local path."""
    match = _URL.match(path)
    if match is None:
        return None
    scheme = match.group(1).lower()
    return scheme if scheme in SCHEMES else None


def is_url(path: str) -> bool:
    """True for ``s3://``, ``gs://``, ``az://`` (and their aliases) and ``http(s)://``; False for local paths."""
    return url_scheme(path) is not None


def is_http(path: str) -> bool:
    return url_scheme(path) in ("http", "https")


def _split(url: str) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for ``s3://bucket/key`` (the path as fsspec lists it: no trailing slash)."""
    scheme = url_scheme(url)
    if scheme is None:
        raise ValueError(f"not a storage URL: {url!r}")
    return scheme, url[len(scheme) + 3 :].rstrip("/")


def parse_storage_options(items: Iterable[str], option: str = "--storage-option") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> fsspec keyword arguments.

    A value that is JSON other than a string (``true``, ``false``, ``null``, a number, ``{...}``,
    ``[...]``) is passed as that value; anything else as the text given (``'"123"'``: the string
    ``123``). A dotted key sets a nested option: ``client_kwargs.region_name=eu-west-1``.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"{option} takes KEY=VALUE (such as endpoint_url=http://127.0.0.1:9000), got {item!r}")
        value: Any = text
        with contextlib.suppress(ValueError):
            value = json.loads(text)  # a JSON string only parses from a quoted one
        target = options
        *parents, last = key.split(".")
        for part in parents:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise UsageError(f"{option} {key}: {part} is given both as a value and as a group of options")
            target = nested
        target[last] = value
    return options


def _read_reason(exc: BaseException) -> str:
    """An input's error record for a read that failed (never the options: no secret in it)."""
    if isinstance(exc, FileNotFoundError):
        return "object not found"
    if isinstance(exc, PermissionError):
        return "access denied"
    text = str(exc).strip() or type(exc).__name__
    return f"cannot read: {text}"[:300]


def walk_levels(root: str, level: Callable[[str], list[tuple[str, bool]]]) -> Iterator[str]:
    """Depth-first over a tree a level at a time: ``level(folder)`` gives a folder's entries as
    ``(name, walk_into)`` in the order wanted; leaves are yielded, folders walked in place. Only
    the levels on the way down are held (local folders and object-store prefixes alike)."""
    stack = [iter(level(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry[1]:
            stack.append(iter(level(entry[0])))
        else:
            yield entry[0]


class Storage:
    """Lists, reads and writes URLs; one fsspec filesystem per protocol, made on first use.

    ``options``: keyword arguments for every fsspec filesystem the run opens (``--storage-option``).
    Pickles without its filesystems (each process makes its own).
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self._options: dict[str, Any] = dict(options or {})
        self._filesystems: dict[str, AbstractFileSystem] = {}
        self._lock = threading.Lock()

    @property
    def option_keys(self) -> list[str]:
        """The options' keys, sorted (what may be shown: the values may be secrets)."""
        return sorted(self._options)

    def __repr__(self) -> str:
        return f"Storage(options={self.option_keys})"

    def __getstate__(self) -> dict[str, Any]:
        return {"_options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_options"])  # type: ignore[misc]

    # -- filesystems -----------------------------------------------------------------------
    def filesystem(self, url: str) -> AbstractFileSystem:
        """The fsspec filesystem for ``url``'s scheme; a :class:`StorageError` naming the extra if missing."""
        scheme = url_scheme(url)
        protocol = SCHEMES.get(scheme or "")
        if protocol is None:
            raise ValueError(f"no fsspec filesystem for {url!r}")
        with self._lock:
            fs = self._filesystems.get(protocol)
            if fs is None:
                fs = self._filesystems[protocol] = self._make(scheme or "", protocol)
        return fs

    def _make(self, scheme: str, protocol: str) -> AbstractFileSystem:
        import importlib

        module, extra = FILESYSTEMS[protocol]
        try:
            importlib.import_module(module)
            import fsspec
        except ImportError:
            raise StorageError(f"{scheme}:// needs {module} (the {extra} extra): {install_hint(extra)}") from None
        try:
            # an instance of its own: the configuration (environment, options) read now, not a cached one's
            return fsspec.filesystem(protocol, skip_instance_cache=True, **self._options)
        except TypeError as exc:  # an option the filesystem does not take
            raise UsageError(f"--storage-option: {module} does not take these options ({exc})") from None

    # -- listing ---------------------------------------------------------------------------
    def _listing(self, url: str, call: Any) -> Any:
        try:
            return call()
        except ImgclassifyError:
            raise
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(f"cannot list {url}: {_read_reason(exc).removeprefix('cannot read: ')}") from None

    def isfile(self, url: str) -> bool:
        """An object exists at ``url`` (not a prefix)."""
        _, path = _split(url)
        fs = self.filesystem(url)
        return bool(self._listing(url, lambda: fs.isfile(path)))

    def isdir(self, url: str) -> bool:
        """``url`` is a prefix (a "folder") that holds at least one object, or a bucket."""
        _, path = _split(url)
        fs = self.filesystem(url)
        return bool(self._listing(url, lambda: fs.isdir(path)))

    def walk(self, url: str) -> list[str]:
        """Every object below the prefix ``url``, as URLs spelled with ``url``'s scheme, in the
        store's order (the caller sorts: :mod:`imgclassify.run.inputs`)."""
        scheme, path = _split(url)
        fs = self.filesystem(url)
        found = self._listing(url, lambda: fs.find(path)) or []
        return [f"{scheme}://{key}" for key in found]

    def iter_walk(self, url: str, key: Callable[[str], Any]) -> Iterator[str]:
        """Every object below the prefix ``url``, as URLs spelled with ``url``'s scheme, a level at a
        time: each prefix's entries listed (one request, paged by the store), sorted by ``key`` of
        their last part, objects yielded and sub-prefixes walked in that order. Only the levels on
        the way down are held, never the whole listing; listings are not kept in the filesystem's
        cache. A level that cannot be listed is a :class:`StorageError`."""
        scheme, root = _split(url)
        fs = self.filesystem(url)

        def level(path: str) -> list[tuple[str, bool]]:
            entries = self._listing(f"{scheme}://{path}", lambda: fs.ls(path, detail=True)) or []
            with contextlib.suppress(Exception):
                fs.invalidate_cache(path)  # millions of entries: not kept once walked
            found = []
            for entry in entries:
                name = str(entry["name"]).rstrip("/")
                if not name or name == path:  # a "folder" marker object, or the prefix itself
                    continue
                found.append((name, entry.get("type") == "directory"))
            found.sort(key=lambda item: (key(item[0].rpartition("/")[2]), item[0]))
            return found

        for name in walk_levels(root, level):
            yield f"{scheme}://{name}"

    def glob(self, pattern: str) -> list[tuple[str, bool]]:
        """The objects and prefixes matching ``pattern`` (``**`` spans prefixes), as ``(url, is_prefix)``
        in the store's order."""
        scheme, path = _split(pattern)
        fs = self.filesystem(pattern)
        matches = self._listing(pattern, lambda: fs.glob(path, detail=True)) or {}
        return [(f"{scheme}://{key}", info.get("type") == "directory") for key, info in matches.items()]

    # -- reading ---------------------------------------------------------------------------
    def read(self, url: str, *, limit: int = MAX_OBJECT_BYTES) -> bytes:
        """The bytes of the object or page at ``url``; an :class:`ImageError` (the input's error
        record: "object not found", "HTTP 404 Not Found", ...) when it cannot be read."""
        try:
            data = self._read_http(url, limit) if is_http(url) else self._read_object(url, limit)
        except (ImgclassifyError, MemoryError):
            raise
        except Exception as exc:
            raise ImageError(_read_reason(exc)) from None
        if len(data) > limit:
            raise ImageError(f"object too large: more than {limit // (1 << 20)} MiB")
        return data

    def _read_object(self, url: str, limit: int) -> bytes:
        _, path = _split(url)
        fs = self.filesystem(url)
        try:
            return bytes(fs.cat_file(path, start=0, end=limit + 1))  # one ranged GET: never more than the limit
        except (FileNotFoundError, PermissionError):
            raise
        except OSError:
            # S3 answers a range on an empty object with 416 (InvalidRange): look before calling it an error
            if fs.info(path).get("size") == 0:
                return b""
            raise

    @staticmethod
    def _read_http(url: str, limit: int) -> bytes:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, headers={"User-Agent": "imgclassify"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # http(s) only: is_http
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise ImageError(f"object too large: {int(length) // (1 << 20)} MiB")
                return bytes(response.read(limit + 1))
        except urllib.error.HTTPError as exc:
            raise ImageError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise ImageError(f"cannot read: {exc.reason}"[:300]) from None

    # -- outputs ---------------------------------------------------------------------------
    def download(self, url: str, local: Path) -> bool:
        """Copy the object at ``url`` to ``local``; False (``local`` untouched) when there is none."""
        if is_http(url):
            raise UsageError(f"{url}: http(s) URLs are inputs only; write outputs to a file or object storage")
        _, path = _split(url)
        fs = self.filesystem(url)
        try:
            fs.get_file(path, str(local))
        except FileNotFoundError:
            return False
        except ImgclassifyError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot download {url}: {_read_reason(exc).removeprefix('cannot read: ')}") from None
        return True

    def upload(self, local: Path, url: str) -> None:
        """Put the file ``local`` at ``url`` (one object, replaced whole: readers never see part of it)."""
        if is_http(url):
            raise UsageError(f"{url}: http(s) URLs are inputs only; write outputs to a file or object storage")
        _, path = _split(url)
        fs = self.filesystem(url)
        try:
            fs.put_file(str(local), path)
        except ImgclassifyError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot upload {url}: {_read_reason(exc).removeprefix('cannot read: ')}") from None
