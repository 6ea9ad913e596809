"""``--sort-into DIR``: class folders, safe names, no overwrite, whole files, every mode, across
file systems, the journal (resume), ``--dry-run``; and through the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SAMPLES, parse_jsonl
from imgclassify.cli import app
from imgclassify.results.records import Candidate, Prediction
from imgclassify.run.sorting import JOURNAL_NAME, Sorter, SortMode, SortOptions, class_folder, safe_name

KITTEN = Candidate(282, "n02123159", "tiger_cat", 0.9)


def rec(path: Path | str, candidate: Candidate = KITTEN, confident: bool | None = None) -> Prediction:
    return Prediction(str(path), (candidate,), confident=confident)


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


@pytest.fixture
def two_same_names(tmp_path: Path) -> list[Path]:
    """Two different photos both called IMG_0001.jpg, in two folders."""
    a, b = tmp_path / "src" / "a", tmp_path / "src" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    shutil.copy(SAMPLES / "kitten.jpg", a / "IMG_0001.jpg")
    shutil.copy(SAMPLES / "kitten_small.jpg", b / "IMG_0001.jpg")
    return [a / "IMG_0001.jpg", b / "IMG_0001.jpg"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tiger_cat", "tiger_cat"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "_"),
        ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
        ("bell\x07\nline\x7f", "bell__line_"),
        ("  .hidden. ", "hidden"),
        ("", "_"),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_safe_name_is_length_limited_on_utf8_boundaries() -> None:
    long = safe_name("é" * 300)
    assert len(long.encode()) <= 120 and set(long) == {"é"}


def test_class_folders_keep_ids_because_names_repeat() -> None:
    crane_bird = rec("x.jpg", Candidate(134, "n02012849", "crane", 0.9))
    crane_machine = rec("x.jpg", Candidate(517, "n03126707", "crane", 0.9))
    assert (class_folder(crane_bird), class_folder(crane_machine)) == ("134-crane", "517-crane")
    assert class_folder(rec("x.jpg", confident=False)) == "unknown"
    assert class_folder(rec("x.jpg", confident=True)) == "282-tiger_cat"
    assert class_folder(Prediction("x.jpg", error="empty file")) is None
    hostile = rec("x.jpg", Candidate(3, None, "../../up", 0.9))
    assert class_folder(hostile) == "3-_.._up"


def test_copy_never_collides_or_overwrites_in_input_order(tmp_path: Path, two_same_names: list[Path]) -> None:
    out = tmp_path / "sorted"
    (out / "282-tiger_cat").mkdir(parents=True)
    (out / "282-tiger_cat" / "IMG_0001.jpg").write_bytes(b"already here")
    sorter = Sorter(SortOptions(out))
    sorter.sort([rec(p) for p in two_same_names])
    sorter.close()
    folder = out / "282-tiger_cat"
    assert (folder / "IMG_0001.jpg").read_bytes() == b"already here"  # never overwritten
    assert (folder / "IMG_0001-2.jpg").read_bytes() == two_same_names[0].read_bytes()
    assert (folder / "IMG_0001-3.jpg").read_bytes() == two_same_names[1].read_bytes()
    assert files(out) == sorted([JOURNAL_NAME, *(f"282-tiger_cat/IMG_0001{s}.jpg" for s in ("", "-2", "-3"))])
    assert all(p.exists() for p in two_same_names)  # copy leaves the sources alone
    assert sorter.counts.to_dict() == {"sorted": 2, "already_sorted": 0, "failed": 0, "not_classified": 0}


def test_unknown_failed_and_missing_files(tmp_path: Path, two_same_names: list[Path]) -> None:
    out = tmp_path / "sorted"
    sorter = Sorter(SortOptions(out, SortMode.MOVE))
    records = [
        rec(two_same_names[0], confident=False),
        Prediction(str(two_same_names[1]), error="truncated image file"),
        rec(tmp_path / "gone.jpg"),
    ]
    sorter.sort(records)
    sorter.close()
    assert files(out) == [JOURNAL_NAME, "unknown/IMG_0001.jpg"]
    assert two_same_names[1].exists()  # a failed file is left alone
    assert sorter.counts.to_dict() == {"sorted": 1, "already_sorted": 0, "failed": 1, "not_classified": 1}
    assert sorter.counts.failures == [(str(tmp_path / "gone.jpg"), "No such file or directory")]


@pytest.mark.parametrize("mode", list(SortMode))
def test_every_mode(tmp_path: Path, two_same_names: list[Path], mode: SortMode) -> None:
    source = two_same_names[0]
    content, inode = source.read_bytes(), source.stat().st_ino
    out = tmp_path / "sorted"
    sorter = Sorter(SortOptions(out, mode))
    destination = sorter.sort_one(rec(source))
    sorter.close()
    assert destination == out / "282-tiger_cat" / "IMG_0001.jpg"
    assert destination.read_bytes() == content
    assert source.exists() == (mode is not SortMode.MOVE)
    if mode is SortMode.HARDLINK:
        assert destination.stat().st_ino == inode
    if mode is SortMode.SYMLINK:
        assert destination.is_symlink() and os.readlink(destination) == str(source)
    if mode is SortMode.COPY:
        assert destination.stat().st_ino != inode and not destination.is_symlink()


def other_file_system(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no tmpfs on another file system than the temporary folder")
    return Path(tempfile.mkdtemp(dir=shm, prefix="imgclassify-test-"))


@pytest.mark.parametrize("mode", [SortMode.MOVE, SortMode.COPY, SortMode.HARDLINK])
def test_across_file_systems(tmp_path: Path, two_same_names: list[Path], mode: SortMode) -> None:
    other = other_file_system(tmp_path)
    try:
        source = two_same_names[0]
        content = source.read_bytes()
        sorter = Sorter(SortOptions(other / "sorted", mode))
        destination = sorter.sort_one(rec(source))
        sorter.close()
        if mode is SortMode.HARDLINK:  # impossible: listed, left alone
            assert destination is None and source.exists()
            assert sorter.counts.failures == [
                (str(source), "hard links cannot cross file systems; use --sort-mode copy or symlink")
            ]
            return
        assert destination is not None and destination.read_bytes() == content
        assert source.exists() == (mode is SortMode.COPY)
        assert files(other / "sorted") == [JOURNAL_NAME, "282-tiger_cat/IMG_0001.jpg"]  # no temporary left
    finally:
        shutil.rmtree(other)


def test_journal_makes_sorting_idempotent(tmp_path: Path, two_same_names: list[Path]) -> None:
    out = tmp_path / "sorted"
    records = [rec(p) for p in two_same_names]
    first = Sorter(SortOptions(out))
    first.sort(records[:1])
    first.close()
    second = Sorter(SortOptions(out))  # a resumed run sees the first image again, and the second one
    second.sort(records)
    second.close()
    assert files(out) == [JOURNAL_NAME, "282-tiger_cat/IMG_0001-2.jpg", "282-tiger_cat/IMG_0001.jpg"]
    assert (second.counts.sorted, second.counts.already_sorted) == (1, 1)
    journal = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()]
    assert [(e["source"], e["destination"]) for e in journal] == [
        (str(two_same_names[0]), "282-tiger_cat/IMG_0001.jpg"),
        (str(two_same_names[1]), "282-tiger_cat/IMG_0001-2.jpg"),
    ]


def test_dry_run_plans_and_changes_nothing(tmp_path: Path, two_same_names: list[Path]) -> None:
    out = tmp_path / "sorted"
    plan = io.StringIO()
    sorter = Sorter(SortOptions(out, SortMode.MOVE, dry_run=True), plan_stream=plan)
    sorter.sort([rec(p) for p in two_same_names])
    sorter.close()
    assert not out.exists() and all(p.exists() for p in two_same_names)
    assert plan.getvalue().splitlines() == [
        f"move\t{two_same_names[0]}\t{out}/282-tiger_cat/IMG_0001.jpg",
        f"move\t{two_same_names[1]}\t{out}/282-tiger_cat/IMG_0001-2.jpg",
    ]


def test_cli_sort_into_with_threshold_and_resume(runner: CliRunner, tmp_path: Path, cwd_tmp: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("kitten.jpg", "labrador.jpg"):
        shutil.copy(SAMPLES / name, src / name)
    (src / "zz_broken.jpg").write_bytes(b"not a photo")
    args = ["predict", str(src), "-m", "efficientnet_lite0", "--threshold", "0.6", "--sort-into", "sorted"]
    result = runner.invoke(app, [*args, "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 1 and not Path("sorted").exists()
    assert result.stdout.splitlines() == [f"copy\t{src / 'kitten.jpg'}\tsorted/unknown/kitten.jpg",
                                          f"copy\t{src / 'labrador.jpg'}\tsorted/208-Labrador_retriever/labrador.jpg"]  # fmt: skip
    result = runner.invoke(app, [*args, "-o", "out.jsonl"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "sorted 2 into sorted (copy), 0 already sorted, 0 could not be sorted" in result.stderr
    assert files(Path("sorted")) == [JOURNAL_NAME, "208-Labrador_retriever/labrador.jpg", "unknown/kitten.jpg"]
    manifest = json.loads(Path("out.jsonl.manifest.json").read_text())
    assert manifest["sort"]["mode"] == "copy" and manifest["sort"]["counts"]["sorted"] == 2
    lines = Path("out.jsonl").read_text().splitlines()
    Path("out.jsonl").write_text(lines[0] + "\n")  # as if killed after the first record
    result = runner.invoke(app, [*args, "-o", "out.jsonl", "--resume"], catch_exceptions=False)
    assert "sorted 0 into sorted (copy), 1 already sorted" in result.stderr
    assert files(Path("sorted")) == [JOURNAL_NAME, "208-Labrador_retriever/labrador.jpg", "unknown/kitten.jpg"]
    assert len(parse_jsonl(Path("out.jsonl").read_text())) == 3


def test_cli_sort_options_need_sort_into(runner: CliRunner) -> None:
    result = runner.invoke(app, ["predict", str(SAMPLES / "kitten.jpg"), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 2 and "--dry-run needs --sort-into DIR" in result.stderr
    result = runner.invoke(
        app,
        ["predict", str(SAMPLES / "kitten.jpg"), "--sort-into", str(SAMPLES / "kitten.jpg")],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
