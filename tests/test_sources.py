"""Input expansion: files, directories, nested directories, globs, **, stdin, duplicates."""

from __future__ import annotations

import io
import os
from pathlib import Path

from imgclassify.run.inputs import expand_inputs, natural_key


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_natural_order() -> None:
    names = ["img10.jpg", "img2.jpg", "IMG1.jpg", "img2b.jpg"]
    assert sorted(names, key=natural_key) == ["IMG1.jpg", "img2.jpg", "img2b.jpg", "img10.jpg"]


def test_directory_recursive_natural_order_skips_non_images(cwd_tmp: Path) -> None:
    for name in ["d/img10.jpg", "d/img2.PNG", "d/sub/a1.webp", "d/sub2/b.jpeg", "d/readme.txt", "d/sub/data.csv"]:
        touch(cwd_tmp / name)
    found = expand_inputs(["d"])
    assert found.paths == [
        os.path.join("d", "img2.PNG"),
        os.path.join("d", "img10.jpg"),
        os.path.join("d", "sub", "a1.webp"),
        os.path.join("d", "sub2", "b.jpeg"),
    ]
    assert found.skipped_non_images == 2


def test_explicit_file_kept_whatever_its_suffix(cwd_tmp: Path) -> None:
    touch(cwd_tmp / "photo.data")
    assert expand_inputs(["photo.data"]).paths == ["photo.data"]


def test_globs_and_double_star(cwd_tmp: Path) -> None:
    for name in ["a/x1.jpg", "a/x2.txt", "a/b/x3.jpg", "a/b/c/x4.png"]:
        touch(cwd_tmp / name)
    assert expand_inputs(["a/*.jpg"]).paths == ["a/x1.jpg"]
    deep = expand_inputs(["a/**/*.jpg"])
    assert deep.paths == ["a/b/x3.jpg", "a/x1.jpg"]
    everything = expand_inputs(["a/**"])
    assert sorted(everything.paths) == ["a/b/c/x4.png", "a/b/x3.jpg", "a/x1.jpg"]
    assert everything.skipped_non_images == 1
    empty = expand_inputs(["a/*.gif"])
    assert empty.paths == [] and empty.empty_globs == ["a/*.gif"]


def test_duplicates_classified_once_in_first_place(cwd_tmp: Path) -> None:
    touch(cwd_tmp / "d/one.jpg")
    touch(cwd_tmp / "d/two.jpg")
    found = expand_inputs(["d/two.jpg", "d", "./d/one.jpg", "d/two.jpg"])
    assert found.paths == ["d/two.jpg", os.path.join("d", "one.jpg")]
    assert found.duplicates == 3


def test_stdin_list(cwd_tmp: Path) -> None:
    touch(cwd_tmp / "s/1.jpg")
    touch(cwd_tmp / "s/2.jpg")
    stdin = io.StringIO("s/2.jpg\n\ns/1.jpg\r\ns/2.jpg\n")
    found = expand_inputs(["-"], stdin=stdin)
    assert found.paths == ["s/2.jpg", "s/1.jpg"]


def test_missing_paths_are_kept_for_an_error_record(cwd_tmp: Path) -> None:
    touch(cwd_tmp / "ok.jpg")
    found = expand_inputs(["nope.jpg", "ok.jpg"])
    assert found.paths == ["nope.jpg", "ok.jpg"]
    assert found.missing == ["nope.jpg"] and found.found_any
    assert not expand_inputs(["nope.jpg"]).found_any


def test_symlink_loop_does_not_hang(cwd_tmp: Path) -> None:
    touch(cwd_tmp / "loop/a.jpg")
    os.symlink(cwd_tmp / "loop", cwd_tmp / "loop" / "again")
    assert expand_inputs(["loop"]).paths == [os.path.join("loop", "a.jpg")]
