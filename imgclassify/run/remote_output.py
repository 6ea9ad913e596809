"""``-o s3://bucket/out.jsonl``: a run's output (and its manifest) in object storage.

The run writes to a local temporary folder, exactly as it writes a local ``--output``; when it
ends (complete, stopped by ``--max-failures``, interrupted, or failed after it began writing)
the output is put in place, one object replaced whole (readers see the old object or the new
one, never part of one), and then the manifest beside it (``out.jsonl.manifest.json``: a
manifest that says "complete" is only there once the output it describes is). ``--resume``
downloads what exists first, then goes on as for a local file. An upload that fails leaves the
local files where they are and says where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from imgclassify.results.manifest import MANIFEST_SUFFIX, manifest_path_for
from imgclassify.system.staging import object_name
from imgclassify.system.storage import Storage, StorageError

if TYPE_CHECKING:
    from imgclassify.run.runner import PredictOptions

log = logging.getLogger("imgclassify")


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells a file written since: its size and modification time (None: no file)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


def manifest_url_for(url: str) -> str:
    """The manifest beside an output URL: ``s3://b/out.jsonl`` -> ``s3://b/out.jsonl.manifest.json``."""
    return url + MANIFEST_SUFFIX


@contextlib.contextmanager
def staged_output(options: PredictOptions, storage: Storage) -> Iterator[PredictOptions]:
    """The options with ``output`` (and the manifest, unless ``--manifest`` names a local file)
    in a local temporary folder; what the run wrote there is uploaded when the block ends."""
    url = options.output_url
    assert url is not None
    name = object_name(url, "--output")  # not http(s), not a prefix
    storage.filesystem(url)  # a missing extra fails now, before the model loads
    folder = Path(tempfile.mkdtemp(prefix="imgclassify-output-"))
    local = folder / name
    manifest_url = manifest_url_for(url) if options.manifest is None else None
    local_manifest = manifest_path_for(local) if manifest_url is not None else options.manifest
    uploads: list[tuple[Path, str]] = [(local, url)]
    if manifest_url is not None:
        assert local_manifest is not None
        uploads.append((local_manifest, manifest_url))
    if options.resume:  # what an earlier run put there, to continue
        for path, target in uploads:
            if storage.download(target, path):
                log.info("--resume: downloaded %s", target)
    before = {path: _stamp(path) for path, _ in uploads}
    keep = False
    try:
        yield dataclasses.replace(options, output=local, manifest=local_manifest)
    finally:
        try:
            for path, target in uploads:  # the output first: the manifest describes it
                if _stamp(path) is not None and _stamp(path) != before[path]:
                    storage.upload(path, target)
        except StorageError as exc:
            keep = True
            log.error("%s; the records are kept in %s", exc, folder)
            raise
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
