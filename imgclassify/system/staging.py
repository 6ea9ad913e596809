"""Files in object storage worked on as local files: downloaded to a temporary folder, or written there and uploaded.

What ``merge`` and ``report`` read from and write to ``s3://``, ``gs://`` and ``az://``
(``predict -o URL`` stages its output the same way: :mod:`imgclassify.run.remote_output`). A
download streams the object to disk (:meth:`Storage.download`), never into memory whole; an
output is written locally and then put in place as one object, replaced whole (readers see the
old object or the new one, never part of one), followed by its companions (the manifest beside
it), and only when the work that wrote it ended without an error.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from imgclassify.errors import ImgclassifyError, UsageError
from imgclassify.system.storage import Storage, StorageError, is_http, is_url


def is_object_url(value: object) -> bool:
    """``value`` is a string naming an object-store URL (``s3://``, ``gs://``, ``az://``; not ``http(s)``)."""
    return isinstance(value, str) and is_url(value) and not is_http(value)


def object_name(url: str, option: str) -> str:
    """The name an object URL ends in (``s3://b/run/all.jsonl`` -> ``all.jsonl``); a UsageError, naming
    ``option``, for an ``http(s)`` URL or a URL that names a prefix or a bucket rather than an object."""
    if is_http(url):
        raise UsageError(f"{option} {url}: http(s) URLs are inputs only; write to a file or object storage")
    path = url.split("://", 1)[1]
    name = path.rsplit("/", 1)[-1]
    if not name or "/" not in path:
        raise UsageError(f"{option} {url} names a prefix: give an object name (s3://bucket/results.jsonl)")
    return name


def object_exists(storage: Storage, url: str) -> bool:
    """An object (not a prefix) is at ``url``; a :class:`StorageError` when the store cannot tell
    (unreachable, access denied, no credentials), never a False that would read as "not found"."""
    fs = storage.filesystem(url)
    try:
        info = fs.info(url.split("://", 1)[1])
    except FileNotFoundError:
        return False
    except ImgclassifyError:
        raise
    except PermissionError:
        raise StorageError(f"cannot read {url}: access denied") from None
    except Exception as exc:  # the reason only: never the options
        raise StorageError(f"cannot read {url}: {str(exc).strip() or type(exc).__name__}"[:300]) from None
    return bool(info.get("type") == "file")


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A new temporary folder, removed with what it holds when the block ends (an error too)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staged_upload(storage: Storage, url: str, *, option: str, companions: Sequence[str] = ()) -> Iterator[Path]:
    """A local path, in a temporary folder, to write the object ``url`` to. When the block ends normally
    the file is uploaded (one object, replaced whole), then each companion written beside it
    (``FILE + suffix`` for each suffix in ``companions``: the manifest) to ``url + suffix``. When the
    block raises, nothing is uploaded. The folder is removed, except after an upload that failed:
    the error then says where the files are kept.

    A bad URL (:func:`object_name`) or a filesystem that is not installed fails on entry, before any work.
    """
    name = object_name(url, option)
    storage.filesystem(url)  # a missing extra fails now
    folder = Path(tempfile.mkdtemp(prefix="imgclassify-output-"))
    local = folder / name
    try:
        yield local
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        if local.is_file():  # the file first: a companion (the manifest) describes it
            storage.upload(local, url)
            for suffix in companions:
                companion = local.with_name(local.name + suffix)
                if companion.is_file():
                    storage.upload(companion, url + suffix)
    except StorageError as exc:
        raise StorageError(f"{exc}; the files are kept in {folder}") from None
    shutil.rmtree(folder, ignore_errors=True)
