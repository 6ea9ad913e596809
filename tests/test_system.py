"""system.parallel's ordered map (order, bounded window, cancel, errors) and system.fs's atomic
writes (temporaries removed on any error, a pair committed .bin first and .xml last, nothing at
the destination after a failure), and the writers that use them: downloads, OpenVINO's cache,
``--sort-into``'s copies."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest

from imgclassify.errors import WeightsUnavailableError
from imgclassify.system.fs import created_exclusively, replaced_atomically, replaced_together
from imgclassify.system.parallel import ordered_map


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- parallel.ordered_map ------------------------------------------------------------------------


def test_ordered_map_keeps_input_order_whatever_finishes_first() -> None:
    def slow_for_small(i: int) -> int:
        time.sleep(0.002 * (20 - i))  # the first items finish last
        return i * i

    with ThreadPoolExecutor(8) as pool:
        assert list(ordered_map(slow_for_small, range(20), executor=pool, window=8)) == [i * i for i in range(20)]
        assert list(ordered_map(slow_for_small, [], executor=pool, window=3)) == []


def test_ordered_map_keeps_at_most_window_in_flight_and_reads_items_lazily() -> None:
    lock = threading.Lock()
    running = peak = 0
    pulled = 0

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        return i

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(60):
            pulled += 1
            yield i

    window = 3
    with ThreadPoolExecutor(16) as pool:  # more threads than the window: only the window limits
        mapped = ordered_map(work, items(), executor=pool, window=window)
        assert pulled == 0  # nothing is submitted before the first result is asked for
        for taken, result in enumerate(mapped, start=1):
            assert result == taken - 1
            assert pulled <= taken + window  # the input is read at most a window ahead
    assert 2 <= peak <= window  # in parallel, never more than the window at once


def test_ordered_map_cancels_what_has_not_started_when_closed() -> None:
    started: list[int] = []
    holding, gate = threading.Event(), threading.Event()

    def work(i: int) -> int:
        started.append(i)
        if i == 1:
            holding.set()
            gate.wait(10)  # the one worker holds item 1 while the caller stops
        return i

    pool = ThreadPoolExecutor(1)
    mapped = ordered_map(work, range(100), executor=pool, window=5)
    assert next(mapped) == 0
    assert holding.wait(10)
    mapped.close()
    gate.set()
    pool.shutdown(wait=True)
    assert started == [0, 1]  # items 2..5 were submitted, then cancelled; none after them was read


def test_ordered_map_raises_in_the_failing_items_place_and_cancels_the_rest() -> None:
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("item 3 is bad")
        time.sleep(0.01)
        return i

    pool = ThreadPoolExecutor(1)
    mapped = ordered_map(work, range(100), executor=pool, window=4)
    got = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for result in mapped:
            got.append(result)
    pool.shutdown(wait=True)
    assert got == [0, 1, 2]  # every result before the failing one, in order
    assert len(started) <= 3 + 1 + 4  # the pending ones were cancelled, not run
    assert list(mapped) == []  # and the map is over


def test_ordered_map_input_errors_propagate_and_window_is_checked() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("cannot list the inputs")

    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(OSError, match="cannot list"):
            list(ordered_map(str, items(), executor=pool, window=4))
        with pytest.raises(ValueError, match="at least 1"):
            ordered_map(str, [1], executor=pool, window=0)  # at the call, not at the first result


# -- fs: one file --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_replaced_atomically_cleans_up_on_any_error(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / ("x" * 250 + ".json")  # a name as long as file systems allow: its temporary fits too
    target.write_text("old")
    with pytest.raises(error), replaced_atomically(target, fsync=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_text("half")
        raise error()
    assert target.read_text() == "old" and _names(tmp_path) == [target.name]


def test_fsync_flushes_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with replaced_atomically(tmp_path / "a.json", fsync=True) as tmp:
        tmp.write_text("{}")
    assert events == ["fsync", "replace"]


# -- fs: a set of files, committed together ------------------------------------------------------


def test_replaced_together_commits_the_bin_first_and_the_xml_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xml, bin_ = tmp_path / "cache" / "model.xml", tmp_path / "cache" / "model.bin"
    seen: list[tuple[str, bool, bool]] = []  # (what is renamed, .xml there, .bin there) at each rename
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        seen.append((Path(dst).name, xml.exists(), bin_.exists()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with replaced_together([bin_, xml], fsync=True) as (tmp_bin, tmp_xml):
        # paths that differ only in their suffix get temporaries that do too (OpenVINO's save_model
        # writes the .bin beside the .xml it is given)
        assert tmp_xml.with_suffix(".bin") == tmp_bin and tmp_xml.name.startswith(".")
        tmp_bin.write_bytes(b"weights")
        tmp_xml.write_text("<net/>")
        assert not xml.exists() and not bin_.exists()
    assert seen == [("model.bin", False, False), ("model.xml", False, True)]  # the .xml finds its .bin
    assert xml.read_text() == "<net/>" and bin_.read_bytes() == b"weights"
    assert _names(xml.parent) == ["model.bin", "model.xml"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_replaced_together_commits_nothing_when_the_block_fails(tmp_path: Path, error: type[BaseException]) -> None:
    xml = tmp_path / "model.xml"
    with pytest.raises(error), replaced_together([xml.with_suffix(".bin"), xml]) as (tmp_bin, tmp_xml):
        tmp_bin.write_bytes(b"weights")
        tmp_xml.write_text("<net")
        raise error()
    assert _names(tmp_path) == []
    # a writer that left one file out (here the last): nothing is committed either
    with pytest.raises(FileNotFoundError), replaced_together([xml.with_suffix(".bin"), xml]) as (tmp_bin, _):
        tmp_bin.write_bytes(b"weights")
    assert _names(tmp_path) == []
    with pytest.raises(ValueError, match="twice"), replaced_together([xml, xml]):
        pass


def test_replaced_together_a_failed_last_rename_leaves_no_xml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xml = tmp_path / "model.xml"
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith(".xml"):
            raise OSError(errno.EIO, "disk error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk error"), replaced_together([xml.with_suffix(".bin"), xml]) as temps:
        for tmp in temps:
            tmp.write_text("x")
    assert _names(tmp_path) == ["model.bin"]  # the reader checks the .xml: it finds no model


class FakeOpenVino:
    """``ov.save_model`` as OpenVINO does it: the .xml at the path given, its .bin beside it."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_model(self, model: Any, xml: Path, **options: Any) -> None:
        Path(xml).with_suffix(".bin").write_bytes(b"weights")
        if self.fail:
            raise KeyboardInterrupt  # Ctrl-C half way through
        Path(xml).write_text(f"<net {model} {options}/>")


def test_save_model_pair_whole_or_not_at_all(tmp_path: Path) -> None:
    from imgclassify.inference.openvino import save_model_pair

    xml = tmp_path / "openvino" / "m-224-abc-ov2024.4.0.xml"
    with pytest.raises(KeyboardInterrupt):
        save_model_pair(FakeOpenVino(fail=True), "net", xml)
    assert _names(xml.parent) == []
    save_model_pair(FakeOpenVino(), "net", xml, compress_to_fp16=False)
    assert xml.read_text() == "<net net {'compress_to_fp16': False}/>"
    assert _names(xml.parent) == ["m-224-abc-ov2024.4.0.bin", "m-224-abc-ov2024.4.0.xml"]


def test_save_model_pair_with_openvino(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    import numpy as np
    import openvino.opset13 as ops

    from imgclassify.inference.openvino import save_model_pair

    x = ops.parameter([1, 3], np.float32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(np.arange(6, dtype=np.float32).reshape(3, 2)), False, False)], [x])
    xml = tmp_path / "tiny-ov2024.4.0.xml"
    save_model_pair(ov, model, xml)
    assert _names(tmp_path) == ["tiny-ov2024.4.0.bin", "tiny-ov2024.4.0.xml"]
    out = ov.Core().compile_model(str(xml), "CPU")(np.ones((1, 3), np.float32))[0]
    assert out.tolist() == [[6.0, 9.0]]


# -- fs: a new name, never overwritten -----------------------------------------------------------


def test_created_exclusively_never_overwrites(tmp_path: Path) -> None:
    final = tmp_path / "photo.jpg"
    with created_exclusively(final, fsync=True) as tmp:
        tmp.write_bytes(b"first")
    assert final.read_bytes() == b"first" and _names(tmp_path) == ["photo.jpg"]
    with pytest.raises(FileExistsError), created_exclusively(final) as tmp:  # taken before
        tmp.write_bytes(b"second")
    other = tmp_path / "other.jpg"
    with pytest.raises(FileExistsError), created_exclusively(other) as tmp:
        tmp.write_bytes(b"mine")
        other.write_bytes(b"someone else's")  # taken while the block ran
    assert final.read_bytes() == b"first" and other.read_bytes() == b"someone else's"
    assert _names(tmp_path) == ["other.jpg", "photo.jpg"]


def test_created_exclusively_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "no hard links on this file system")

    monkeypatch.setattr(os, "link", no_links)
    final = tmp_path / "photo.jpg"
    with created_exclusively(final) as tmp:
        tmp.write_bytes(b"first")
    assert final.read_bytes() == b"first" and _names(tmp_path) == ["photo.jpg"]
    with pytest.raises(FileExistsError), created_exclusively(final) as tmp:
        tmp.write_bytes(b"second")
    assert final.read_bytes() == b"first"

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "disk error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk error"), created_exclusively(tmp_path / "new.jpg") as tmp:
        tmp.write_bytes(b"new")
    assert _names(tmp_path) == ["photo.jpg"]  # neither the temporary nor the empty claim is left


def test_sort_copy_leaves_nothing_when_the_copy_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from imgclassify.run import sorting

    source = tmp_path / "src.jpg"
    source.write_bytes(b"jpeg")
    folder = tmp_path / "sorted"
    folder.mkdir()
    (folder / "taken.jpg").write_bytes(b"old")
    with pytest.raises(sorting._NameTaken):
        sorting._copy_exclusive(str(source), folder / "taken.jpg")
    assert (folder / "taken.jpg").read_bytes() == b"old" and _names(folder) == ["taken.jpg"]

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copystat", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sorting._copy_exclusive(str(source), folder / "new.jpg")
    assert _names(folder) == ["taken.jpg"]


# -- the weights download ------------------------------------------------------------------------


def test_download_checks_the_hash_before_the_rename(tmp_path: Path) -> None:
    from imgclassify.models.weights import download

    served = tmp_path / "served.pth"
    served.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    hub = tmp_path / "hub"
    good = hub / f"net-{digest[:8]}.pth"
    download(served.as_uri(), good, progress=False)
    assert good.read_bytes() == served.read_bytes() and _names(hub) == [good.name]
    bad = hub / "net-00000000.pth"
    with pytest.raises(WeightsUnavailableError, match="sha256 does not match"):
        download(served.as_uri(), bad, progress=False)
    assert _names(hub) == [good.name]  # neither the bad file nor its temporary


def test_download_cut_short_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import urllib.request

    from imgclassify.models import weights

    class CutShort(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "100000"}

        def read(self, size: int | None = -1) -> bytes:
            if self.tell():
                raise KeyboardInterrupt  # Ctrl-C half way through
            return super().read(size)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: CutShort(b"x" * 100_000))
    dest = tmp_path / "hub" / "net-abcdef12.pth"
    with pytest.raises(KeyboardInterrupt):
        weights.download("https://example.invalid/net-abcdef12.pth", dest, progress=False)
    assert _names(dest.parent) == []
