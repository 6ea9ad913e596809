"""Files written whole or not at all: the one atomic-write helper, for a file, a set of files, a new name.

Every writer here works the same way: it writes to a temporary beside the destination (same
folder, so same file system), and only when its block ends normally is the temporary renamed
(or linked) into place, in one step; when the block raises, ``KeyboardInterrupt`` included,
the temporary is removed and the destination is as it was.

* :func:`replaced_atomically`: one file, replacing whatever was there (results, manifests,
  reports, downloaded weights);
* :func:`replaced_together`: a set of files that belong together (an OpenVINO model's ``.bin``
  and ``.xml``), committed in the order given, so the one readers look for comes last;
* :func:`created_exclusively`: one file at a name that must not exist yet, never overwriting
  (``--sort-into``'s copies: the name is claimed by the commit itself);
* :func:`fsync_directory`: make a rename or link itself durable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: characters of a destination's name kept in its temporary's, so the temporary's name fits the
#: file system's 255 even when the destination's is that long
_NAME_ROOM = 60
#: a link's errno on a file system without hard links (FAT, some network shares)
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def _token() -> str:
    """Unique per call: the process id (whose temporaries they are) and a random part (two
    processes with the same id, in two containers sharing a cache, never collide)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    """Flush a folder's entries to the disk (a rename or link in it survives a power cut); best
    effort: a system that cannot open or sync a folder (Windows, some network shares) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_new(tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final`` only if that name is free: ``FileExistsError`` if taken."""
    try:
        os.link(tmp, final)  # fails on an existing name: never overwrites
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # no hard links here: claim the name first (fails if taken), then rename over the claim
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            os.replace(tmp, final)
        except BaseException:
            final.unlink(missing_ok=True)  # our empty claim, not a file of anyone else's
            raise


@contextlib.contextmanager
def _committed(
    temps: Sequence[Path], finals: Sequence[Path], *, fsync: bool, commit: Callable[[Path, Path], None]
) -> Iterator[None]:
    """The shared part: the block writes ``temps``; then each is flushed (``fsync``) and committed
    to its final name in order; the temporaries are removed whatever happens."""
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
        for tmp in temps:  # a set the block left one of out commits nothing
            if fsync:
                _fsync_file(tmp)
            elif not tmp.exists():
                raise FileNotFoundError(errno.ENOENT, "the block did not write this temporary file", str(tmp))
        for tmp, final in zip(temps, finals, strict=True):
            commit(tmp, final)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):  # never hide the error that brought us here
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replaced_atomically(path: Path, *, temp_suffix: str | None = None, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; when the block ends normally it replaces ``path``
    in one rename (readers see the old file or the new one, never part of one), and when it
    raises (``KeyboardInterrupt`` too) the temporary file is removed and ``path`` is untouched.

    ``temp_suffix``: name it ``path`` + that suffix (``.part``, for a file a user may see being
    written) instead of a hidden name unique to this call (``.NAME.PID-RANDOM.tmp``);
    ``fsync``: flush the file to the disk before the rename (then a power cut leaves the old
    file or the whole new one; :func:`fsync_directory` makes the rename itself durable too).
    """
    if temp_suffix is not None:
        tmp = path.with_name(path.name + temp_suffix)
    else:
        tmp = path.with_name(f".{path.name[:_NAME_ROOM]}.{_token()}.tmp")
    with _committed([tmp], [path], fsync=fsync, commit=os.replace):
        yield tmp


@contextlib.contextmanager
def replaced_together(paths: Sequence[Path], *, fsync: bool = False) -> Iterator[list[Path]]:
    """Temporaries for a set of files that belong together, one per path, in the same order; when
    the block ends normally each replaces its path, in the order given; when it raises, or left
    one of them unwritten, none is committed and every temporary is removed.

    Put last the file readers check for (an OpenVINO model's ``.xml`` after its ``.bin``): a
    reader that finds it finds the rest already in place, never half a set. (A failure between
    two renames, the disk's and not the block's, can leave earlier files renamed and the last
    not: a reader that checks the last still finds no new set.) The temporaries are hidden names unique to this call that keep
    each path's suffix, so paths that differ only in their suffix get temporaries that differ only
    in their suffix (``tmp_xml.with_suffix(".bin")`` is the ``.bin``'s temporary: a writer that
    derives one file's name from another's, as OpenVINO's ``save_model`` does, writes to the
    right ones). ``fsync``: flush every file to the disk before the first rename.
    """
    token = _token()
    temps = [p.with_name(f".{p.stem[:_NAME_ROOM]}.{token}.tmp{p.suffix}") for p in paths]
    if len(set(temps)) != len(temps):
        raise ValueError(f"replaced_together: the same path given twice: {[str(p) for p in paths]}")
    with _committed(temps, list(paths), fsync=fsync, commit=os.replace):
        yield temps


@contextlib.contextmanager
def created_exclusively(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """As :func:`replaced_atomically`, but ``path`` must not exist and is never overwritten: the
    commit links the finished temporary to ``path``, which claims the name and fails with
    ``FileExistsError`` (the temporary removed) if it is taken, even by a file that appeared
    while the block ran. On a file system without hard links the name is claimed with an
    exclusive create, then the temporary renamed over that claim (removed again if the rename
    fails). ``fsync``: flush the file to the disk before it gets its name.
    """
    tmp = path.with_name(f".{path.name[:_NAME_ROOM]}.{_token()}.tmp")
    with _committed([tmp], [path], fsync=fsync, commit=_link_new):
        yield tmp
