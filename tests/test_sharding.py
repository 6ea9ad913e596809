"""``predict --shard K/N`` and ``imgclassify merge``: N shards give exactly the single run's records."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SAMPLES, parse_jsonl
from imgclassify.cli import app
from imgclassify.errors import UsageError
from imgclassify.run.inputs import expand_inputs
from imgclassify.run.merge import merge_key
from imgclassify.run.shards import Shard, shard_hash

# batch size 1: each image's arithmetic then never depends on which others share its batch
# (oneDNN's rounding does on some CPUs, in the 6th decimal), so merged shards are byte-identical
LITE0 = ["-m", "efficientnet_lite0", "-d", "cpu", "--offline", "-b", "1"]
SHARDS = {1: "out.1.jsonl", 2: "out.2.csv", 3: "out.3.json"}  # merge reads every output format


def _refuse_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.pipeline as pipeline

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "build_classifier", refuse)


# --- the shard arithmetic (pure) ---


def test_shares_are_balanced() -> None:
    paths = [f"photos/batch{i // 1000}/IMG_{i:06d}.jpg" for i in range(100_000)]
    for count in (2, 3, 4, 7, 16):
        shares = [len(Shard(k, count).select(paths)) for k in range(1, count + 1)]
        assert sum(shares) == len(paths)  # every path in exactly one share
        expected = len(paths) / count
        worst = max(abs(share - expected) / expected for share in shares)
        assert worst < 0.04, (count, shares)  # measured: 0.10% (N=2) to 2.94% (N=16)


def test_hash_is_stable_and_positional_independent() -> None:
    # blake2b of the path's bytes: the same in every process, machine and Python version
    assert shard_hash("photos/kitten.jpg") == 0x857183459A1E8967
    assert Shard(4, 4).contains("photos/kitten.jpg")  # 0x857183459A1E8967 % 4 == 3
    listing = [f"p/{i}.jpg" for i in range(200)]
    shard = Shard(2, 5)
    assert set(shard.select(listing)) == set(shard.select(list(reversed(listing))))
    assert shard_hash(os.fsdecode(b"caf\xe9.jpg")) == shard_hash(os.fsdecode(b"caf\xe9.jpg"))  # undecodable bytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/4", "--shard 0/4: K in K/N runs from 1 to N (1/4 is the first share, 4/4 the last)"),
        ("5/4", "--shard 5/4: K in K/N runs from 1 to N"),
        ("x", "--shard takes K/N (such as 1/4: the first of 4 shares), got 'x'"),
        ("1/0", "--shard 1/0: K in K/N runs from 1 to N"),
        ("-1/4", "--shard takes K/N"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        Shard.parse(text)
    assert str(info.value).startswith(message)


def test_parse_and_describe() -> None:
    shard = Shard.parse(" 2/4 ")
    assert shard == Shard(2, 4) and str(shard) == "2/4" and shard.describe() == {"index": 2, "count": 4}
    assert Shard.from_manifest(shard.describe()) == shard and Shard.from_manifest(None) is None


def test_merge_key_is_the_walk_order(tmp_path: Path) -> None:
    for name in ("a.jpg", "a/x.jpg", "img10.jpg", "img2.jpg", "B.jpg", "sub10/1.jpg", "sub2/1.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    walked = expand_inputs([str(tmp_path)]).paths
    assert sorted(walked, key=merge_key) == walked


# --- through the CLI ---


@pytest.mark.parametrize("text", ["0/4", "5/4", "x"])
def test_bad_shard_costs_no_model_load(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    _refuse_model_loads(monkeypatch)
    result = runner.invoke(app, ["predict", str(SAMPLES / "kitten.jpg"), *LITE0, "--shard", text])
    assert result.exit_code == 2 and "--shard" in result.stderr and "K/N" in result.stderr, result.stderr


def _photos(root: Path) -> None:
    """A folder like a real one: photos at two levels, numbers in names, a broken file, a non-image."""
    photos = root / "photos"
    (photos / "more").mkdir(parents=True)
    for source in SAMPLES.glob("*.jpg"):
        shutil.copyfile(source, photos / source.name)
    shutil.copyfile(SAMPLES / "labrador.jpg", photos / "more" / "img2.jpg")
    shutil.copyfile(SAMPLES / "dog.jpg", photos / "more" / "img10.jpg")
    (photos / "more" / "broken.jpg").write_bytes((SAMPLES / "kitten.jpg").read_bytes()[:3000])
    (photos / "notes.txt").write_text("not an image\n")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``photos/`` classified once whole (single.jsonl) and as 3 shards (jsonl, csv, json), relative paths."""
    root = tmp_path_factory.mktemp("sharded")
    _photos(root)
    before = os.getcwd()
    os.chdir(root)
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["predict", "photos/", *LITE0, "-o", "single.jsonl"])
        assert result.exit_code == 1, result.stderr  # the broken file
        for index, name in SHARDS.items():
            result = runner.invoke(app, ["predict", "photos/", *LITE0, "--shard", f"{index}/3", "-o", name])
            assert result.exit_code in (0, 1), result.stderr
            assert "inputs)" in result.stderr
    finally:
        os.chdir(before)
    yield root


def _work(sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shards (with manifests) to change, as the current folder."""
    for name in ["single.jsonl", *SHARDS.values()]:
        for path in (sharded / name, sharded / f"{name}.manifest.json"):
            shutil.copyfile(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest_path = path.with_name(path.name + ".manifest.json")
    data = json.loads(manifest_path.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    manifest_path.write_text(json.dumps(data))


@pytest.mark.slow
def test_three_shards_cover_the_folder_once_and_merge_to_the_single_run(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    work = _work(sharded, tmp_path, monkeypatch)
    single = parse_jsonl((work / "single.jsonl").read_text())
    assert len(single) == 10
    from imgclassify.results.report import read_records

    shard_paths = [[r["path"] for r in read_records(work / name)] for name in SHARDS.values()]
    assert all(shard_paths), shard_paths  # each shard has work
    flat = [p for paths in shard_paths for p in paths]
    assert sorted(flat) == sorted(str(r["path"]) for r in single) and len(set(flat)) == len(flat)
    for index, name in SHARDS.items():
        manifest = json.loads((work / f"{name}.manifest.json").read_text())
        assert manifest["run"]["shard"] == {"index": index, "count": 3} and manifest["run"]["inputs"] == ["photos/"]
        assert manifest["counts"]["inputs"] == len(shard_paths[index - 1])
        assert manifest["counts"]["found_before_sharding"] == 10

    result = runner.invoke(app, ["merge", "all.jsonl", *reversed(SHARDS.values())])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "imgclassify: merged 3 shards into all.jsonl: 10 records (9 classified, 1 failed), "
        "manifest all.jsonl.manifest.json\n"
    )
    assert (work / "all.jsonl").read_text() == (work / "single.jsonl").read_text()  # same records, same order
    merged = json.loads((work / "all.jsonl.manifest.json").read_text())
    first = json.loads((work / "out.1.jsonl.manifest.json").read_text())
    assert merged["status"] == "complete" and merged["engine"]["name"] == "merged"
    assert [s["manifest"] for s in merged["engine"]["shards"]] == [f"{n}.manifest.json" for n in SHARDS.values()]
    assert merged["run"]["merged_from"] == 3 and merged["run"]["shard"] is None
    for key in ("model", "weights", "labels", "preprocessing", "precision", "backend"):
        assert merged[key] == first[key], key
    assert merged["counts"] == {
        "inputs": 10, "classified": 9, "failed": 1, "skipped_non_images": 1, "already_done": 0,
    }  # fmt: skip

    result = runner.invoke(app, ["merge", "all.csv", *SHARDS.values()])  # any output format
    assert result.exit_code == 0, result.stderr
    lines = (work / "all.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [r["path"] for r in single]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "shard 2/3 missing (given: 1, 3 of 3); pass the output of every `--shard K/3` run"),
        ("twice", "shard 1/3 given twice: out.1.jsonl and again.jsonl; pass each shard once"),
        ("other model", "out.2.csv (shard 2/3) is from another run than out.1.jsonl (shard 1/3) (model: "),
        ("other weights", "(weights sha256: "),
        ("other split", "are from different splits (N = 3 and 4)"),
        ("other inputs", "(inputs: ['photos/'] -> ['./photos/']"),
        ("interrupted", "out.3.json (shard 3/3) is interrupted (status interrupted); finish it with its command plus"),
        ("running", "is still running, or its process was killed (status running)"),
        ("not sharded", "single.jsonl was not written by a run with --shard"),
        ("no manifest", "out.2.csv has no manifest (out.2.csv.manifest.json beside it)"),
        ("edited", "out.2.csv (shard 2/3) holds 0 records but its manifest counts"),
        ("same path twice", "' is in out.1.jsonl (shard 1/3) and in out.3.json (shard 3/3)"),
        ("output is a shard", "OUTPUT out.1.jsonl is also one of the shards"),
    ],
)
def test_merge_refuses(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner, case: str, message: str
) -> None:
    work = _work(sharded, tmp_path, monkeypatch)
    shards = list(SHARDS.values())
    output = "all.jsonl"
    if case == "missing":
        shards.remove("out.2.csv")
    elif case == "twice":
        shutil.copyfile("out.1.jsonl", "again.jsonl")
        shutil.copyfile("out.1.jsonl.manifest.json", "again.jsonl.manifest.json")
        shards.append("again.jsonl")
    elif case == "other model":
        _edit_manifest(work / "out.2.csv", model__name="densenet121")
    elif case == "other weights":
        _edit_manifest(work / "out.3.json", weights__sha256="a" * 64)
    elif case == "other split":
        _edit_manifest(work / "out.3.json", run__shard={"index": 3, "count": 4})
    elif case == "other inputs":
        _edit_manifest(work / "out.3.json", run__inputs=["./photos/"])
    elif case == "interrupted":
        _edit_manifest(work / "out.3.json", status="interrupted")
    elif case == "running":
        _edit_manifest(work / "out.3.json", status="running")
    elif case == "not sharded":
        shards.append("single.jsonl")
    elif case == "no manifest":
        (work / "out.2.csv.manifest.json").unlink()
    elif case == "edited":
        (work / "out.2.csv").write_text("path,class_id,wnid,class_name,probability,top_k,error\n")
    elif case == "same path twice":  # a path in shard 1 and 3 (and one lost): the counts still add up
        first = (work / "out.1.jsonl").read_text().splitlines(keepends=True)
        (work / "out.1.jsonl").write_text("".join(first[1:] + first[:1]))
        records = json.loads((work / "out.3.json").read_text())
        records[0] = json.loads(first[0])
        (work / "out.3.json").write_text(json.dumps(records))
    elif case == "output is a shard":
        output = "out.1.jsonl"
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    result = runner.invoke(app, ["merge", output, *shards])
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("imgclassify: error: ") and message in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before  # nothing written, nothing left behind


@pytest.mark.slow
def test_merge_refuses_a_real_run_with_other_options(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    work = _work(sharded, tmp_path, monkeypatch)
    (work / "photos").symlink_to(sharded / "photos")
    result = runner.invoke(app, ["predict", "photos/", *LITE0, "-k", "2", "--shard", "2/3", "-o", "other.2.jsonl"])
    assert result.exit_code in (0, 1), result.stderr
    result = runner.invoke(app, ["merge", "all.jsonl", "out.1.jsonl", "other.2.jsonl", "out.3.json"])
    assert result.exit_code == 2
    assert "other.2.jsonl (shard 2/3) is from another run than out.1.jsonl (shard 1/3) (top-k: 1 -> 2)" in result.stderr


@pytest.mark.slow
def test_resume_within_a_shard_and_refused_with_another(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    work = _work(sharded, tmp_path, monkeypatch)
    (work / "photos").symlink_to(sharded / "photos")
    complete = (work / "out.1.jsonl").read_text()
    lines = complete.splitlines(keepends=True)
    assert len(lines) >= 2
    (work / "out.1.jsonl").write_text(lines[0] + lines[1][:10])  # killed after one record, mid-write
    _edit_manifest(work / "out.1.jsonl", status="interrupted")
    result = runner.invoke(app, ["merge", "all.jsonl", *SHARDS.values()])
    assert result.exit_code == 2 and "is interrupted" in result.stderr

    with monkeypatch.context() as patched:  # another shard: refused before the model loads
        _refuse_model_loads(patched)
        result = runner.invoke(app, ["predict", "photos/", *LITE0, "--shard", "2/3", "-o", "out.1.jsonl", "--resume"])
    assert result.exit_code == 2
    assert 'shard: {"count": 3, "index": 1} -> {"count": 3, "index": 2}' in result.stderr, result.stderr

    result = runner.invoke(app, ["predict", "photos/", *LITE0, "--shard", "1/3", "-o", "out.1.jsonl", "--resume"])
    assert result.exit_code in (0, 1), result.stderr
    assert (work / "out.1.jsonl").read_text() == complete
    manifest = json.loads((work / "out.1.jsonl.manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["already_done"] == 1
    result = runner.invoke(app, ["merge", "all.jsonl", *SHARDS.values()])
    assert result.exit_code == 0, result.stderr
    assert (work / "all.jsonl").read_text() == (work / "single.jsonl").read_text()


def test_an_empty_share_is_a_complete_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(SAMPLES / "kitten.jpg", tmp_path / "kitten.jpg")
    owner = next(k for k in range(1, 5) if Shard(k, 4).contains("kitten.jpg"))
    other = owner % 4 + 1
    result = runner.invoke(app, ["predict", "kitten.jpg", *LITE0, "--shard", f"{other}/4", "-o", "o.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "o.jsonl").read_text() == ""
    manifest = json.loads((tmp_path / "o.jsonl.manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["inputs"] == 0
