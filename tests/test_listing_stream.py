"""The listing streams: paths come a folder at a time, and records come before the listing ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from conftest import SAMPLES
from imgclassify.run.inputs import InputListing, expand_inputs


def tree(root: Path, folders: int, per_folder: int) -> list[str]:
    """``root/d1 .. dN`` of ``per_folder`` links each to one photo, in the order they are listed."""
    paths = []
    for d in range(1, folders + 1):
        folder = root / f"d{d}"
        folder.mkdir(parents=True)
        for i in range(1, per_folder + 1):
            (folder / f"img{i}.jpg").symlink_to(SAMPLES / "kitten_small.jpg")
            paths.append(str(folder / f"img{i}.jpg"))
    return paths


def test_a_folder_is_listed_when_the_walk_reaches_it(tmp_path: Path) -> None:
    """The first paths come before the later folders are read: a file added to the last folder
    after the first path was taken is still listed (a listing made up front would miss it)."""
    expected = tree(tmp_path / "t", 3, 4)
    listing = InputListing([str(tmp_path / "t")])
    paths = iter(listing)
    first = next(paths)
    assert first == expected[0] and not listing.complete and listing.listed == 1
    (tmp_path / "t" / "d3" / "img5.jpg").symlink_to(SAMPLES / "kitten_small.jpg")
    (tmp_path / "t" / "d3" / "img10.jpg").symlink_to(SAMPLES / "kitten_small.jpg")
    rest = list(paths)
    assert [first, *rest] == [*expected, str(tmp_path / "t/d3/img5.jpg"), str(tmp_path / "t/d3/img10.jpg")]
    assert listing.complete and listing.listed == 14


def test_streamed_order_and_counts_equal_the_whole_listing(tmp_path: Path) -> None:
    """Mixed files and folders, natural order by part, duplicates across inputs, non-images."""
    root = tmp_path / "m"
    for name in ["b/x2.jpg", "b/x10.jpg", "b.jpg", "a10/y.png", "a2/y.png", "a2/notes.txt", "c.jpg"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / "kitten_small.jpg", root / name)
    inputs = [str(root), str(root / "b"), str(root / "c.jpg"), str(root / "gone.jpg")]
    whole = expand_inputs(inputs)
    assert [os.path.relpath(p, root) for p in whole.paths] == [
        "a2/y.png", "a10/y.png", "b/x2.jpg", "b/x10.jpg", "b.jpg", "c.jpg", "gone.jpg",
    ]  # fmt: skip
    assert (whole.duplicates, whole.skipped_non_images, whole.missing) == (3, 1, [str(root / "gone.jpg")])
    listing = InputListing(inputs)
    assert listing.found_any() and listing.looked_ahead() == [whole.paths[0]]
    assert list(listing) == whole.paths and listing.duplicates == 3 and listing.skipped_non_images == 1


def test_records_come_before_the_listing_ends(tmp_path: Path) -> None:
    """A path list on stdin still open: the first records are written while more paths may come
    (the runner hands the engine 128 batches at a time, here 128 paths at -b 1)."""
    paths = tree(tmp_path / "t", 2, 100)
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1"}
    proc = subprocess.Popen(
        [exe, "predict", "-", "-m", "efficientnet_lite0", "-d", "cpu", "-b", "1", "-f", "jsonl", "--workers", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(f"{p}\n" for p in paths[:130]))
    proc.stdin.flush()
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=120)
    try:
        assert first and first[0], "no record while stdin was open"
        assert json.loads(first[0])["path"] == paths[0]
    finally:
        out, err = proc.communicate("".join(f"{p}\n" for p in paths[130:]), timeout=300)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in [first[0], *out.splitlines()]]
    assert [r["path"] for r in records] == paths
    assert len({r["class_id"] for r in records}) == 1
