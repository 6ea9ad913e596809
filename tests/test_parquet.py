"""The Parquet output (``-o FILE.parquet``): its documented schema, exact round trips of real runs against
JSON Lines, the manifest in the file metadata, row groups streamed both ways, ``merge`` and ``report``
reading it, and ``--resume`` and a missing pyarrow refused before the model loads."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import SAMPLES
from imgclassify.cli import app
from imgclassify.errors import UsageError
from imgclassify.results.formats import (
    OutputFormat,
    ResultsFormatError,
    csv_text,
    detect_format,
    format_for_suffix,
    read_records,
)
from imgclassify.results.formats.parquet import (
    ROW_GROUP_RECORDS,
    ParquetWriter,
    binary_stream,
    file_metadata,
)
from imgclassify.results.records import Candidate, Prediction
from imgclassify.results.resume import recorded_paths

# batch size 1: each image's arithmetic never depends on its batch, so runs and shards agree exactly
LITE0 = ["-m", "efficientnet_lite0", "-d", "cpu", "--offline", "-b", "1"]
LATIN1 = os.fsdecode(b"caf\xe9 \xff.jpg")  # a file name that is not UTF-8 (surrogate escapes)

CANDIDATE = pa.struct(
    [
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("wnid", pa.string()),
        pa.field("class_name", pa.string()),
        pa.field("probability", pa.float64(), nullable=False),
    ]
)
#: the schema docs/output.md documents
SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("class_id", pa.int32()),
        pa.field("wnid", pa.string()),
        pa.field("class_name", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("top_k", pa.list_(pa.field("element", CANDIDATE, nullable=False))),
        pa.field("error", pa.string()),
        pa.field("confident", pa.bool_()),
        pa.field("path_bytes", pa.binary()),
    ]
)


def _refuse_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.pipeline as pipeline

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "build_classifier", refuse)


def synthetic(count: int) -> list[Prediction]:
    def record(i: int) -> Prediction:
        if i % 97 == 96:
            return Prediction(f"photos/{i:05d}.jpg", error="truncated image file")
        top = tuple(Candidate((i + j) % 1000, f"n{i + j:08d}", f"class {i + j}", 1 / (2 + i + j)) for j in range(3))
        return Prediction(f"photos/{i:05d}.jpg", top, confident=i % 2 == 0)

    return [record(i) for i in range(count)]


def write(path: Path, records: list[Prediction], *, batch: int, top_k: int = 3, **options: Any) -> ParquetWriter:
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = ParquetWriter(stream, top_k, **options)
        for start in range(0, len(records), batch):
            writer.write(records[start : start + batch])
            assert len(writer.rows) < writer.row_group_size  # never more than a row group held
        writer.close()
    return writer


# --- the format and its file, without a model ------------------------------------------------------


def test_a_row_of_the_table(tmp_path: Path) -> None:
    fmt = OutputFormat("parquet")
    assert fmt is OutputFormat.PARQUET and fmt.record_format.suffixes == (".parquet",)
    assert format_for_suffix(Path("OUT.PARQUET")) is fmt
    assert fmt.record_format.readable and not fmt.record_format.appendable
    path = tmp_path / "out.parquet"
    write(path, synthetic(5), batch=2)
    assert path.read_bytes()[:4] == b"PAR1" == path.read_bytes()[-4:]
    sniffed = path.rename(tmp_path / "results.txt")  # no telling suffix: the magic bytes say it
    assert detect_format(sniffed) is fmt
    assert list(read_records(sniffed)) == [p.to_dict(top_k=True) for p in synthetic(5)]


def test_schema_types_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    records = [*synthetic(3), Prediction(LATIN1, error="file not found")]
    write(path, records, batch=10)
    table = pq.read_table(path)
    assert table.schema.remove_metadata().equals(SCHEMA), table.schema
    rows = table.to_pylist()
    assert rows[0]["top_k"] == [c.to_dict() for c in records[0].top]
    assert rows[0]["error"] is None and [row["confident"] for row in rows[:3]] == [True, False, True]
    error = rows[3]  # an error record: the class fields null, top_k an empty list when lists are written
    assert (error["class_id"], error["probability"], error["top_k"], error["confident"]) == (None, None, [], None)
    # a name that is not UTF-8: readable text in path, the exact bytes in path_bytes (null otherwise)
    assert error["path"] == "caf\\xe9 \\xff.jpg" and error["path_bytes"] == b"caf\xe9 \xff.jpg"
    assert [row["path_bytes"] for row in rows[:3]] == [None, None, None]
    assert list(read_records(path))[3]["path"] == LATIN1
    assert file_metadata(path) == {"format_version": 1}  # no manifest given: the version alone

    top1 = tmp_path / "top1.parquet"
    write(top1, records, batch=10, top_k=1)
    assert pq.read_table(top1).column("top_k").null_count == len(records)  # the column kept, null
    assert all("top_k" not in record for record in read_records(top1))


def test_row_groups_stream_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.parquet"
    records = synthetic(2500)
    write(path, records, batch=64, manifest=lambda: {"status": "complete"})
    meta = pq.read_metadata(path)
    assert ROW_GROUP_RECORDS == 1000
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [1000, 1000, 500]  # the same groups whatever the batches
    assert file_metadata(path) == {"format_version": 1, "manifest": {"status": "complete"}}

    read: list[int] = []
    original = pq.ParquetFile.read_row_group

    def spy(self: pq.ParquetFile, i: int, *args: Any, **kwargs: Any) -> pa.Table:
        read.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    stream = read_records(path)
    first = next(stream)
    assert first == records[0].to_dict(top_k=True) and read == [0]  # one row group read, not the file
    rest = [next(stream) for _ in range(1000)]
    assert read == [0, 1] and rest[-1]["path"] == records[1000].path
    assert [first, *rest, *stream] == [p.to_dict(top_k=True) for p in records]
    assert read == [0, 1, 2]


def test_an_interrupted_run_leaves_a_whole_file(tmp_path: Path) -> None:
    """SIGINT (and SIGTERM) stop the run between batches: the writer still closes, footer and manifest written."""
    from imgclassify.run.runner import RunSummary, _Sink
    from imgclassify.run.settings import RunSettings

    records = synthetic(2500)

    def batches() -> Iterator[list[Prediction]]:
        yield records[:300]
        yield records[300:1200]
        raise KeyboardInterrupt

    summary = RunSummary(model="fake")
    sink = _Sink(
        OutputFormat.PARQUET, RunSettings(batch_size=300, top_k=3), summary, manifest=lambda: {"status": summary.status}
    )
    path = tmp_path / "out.parquet"
    with open(path, "w", encoding="utf-8", newline="") as stream:
        sink.consume(batches(), lambda: len(records), stream, io.StringIO(), False)
    assert summary.status == "interrupted"
    assert list(read_records(path)) == [p.to_dict(top_k=True) for p in records[:1200]]
    assert file_metadata(path) == {"format_version": 1, "manifest": {"status": "interrupted"}}


def test_a_file_cut_short_is_an_error_naming_why(tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    write(path, synthetic(10), batch=10)
    path.write_bytes(path.read_bytes()[:-20])  # a run killed before it closed the file: no footer
    with pytest.raises(ResultsFormatError, match=r"cut.parquet: not a whole Parquet file .*run it again"):
        list(read_records(path))
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"name": ["a.jpg"]}), other)
    with pytest.raises(ResultsFormatError, match="has no 'path' column"):
        list(read_records(other))


def test_binary_never_to_text_or_a_terminal() -> None:
    with pytest.raises(UsageError, match="binary: write it to a file"):
        binary_stream(io.StringIO())

    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    with pytest.raises(UsageError, match="not for a terminal"):
        binary_stream(Terminal(io.BytesIO()))


def test_resume_is_refused_before_the_model_loads(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_model_loads(monkeypatch)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["predict", str(SAMPLES / "dog.jpg"), *LITE0, "-o", str(out), "--resume"])
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr == (
        "imgclassify: error: --resume works with --format jsonl or csv (a Parquet file cannot be appended to: "
        "its footer is written once, when the run ends); write to a new --output, or use -o FILE.jsonl or "
        "FILE.csv for a run you may need to resume\n"
    )
    with pytest.raises(UsageError, match=r"--resume works with --format jsonl or csv \(a Parquet file"):
        recorded_paths(out, OutputFormat.PARQUET)


def test_missing_pyarrow_names_the_install(tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.parquet"
    write(path, synthetic(2), batch=2)
    _refuse_model_loads(monkeypatch)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    hint = "the parquet format needs pyarrow (the parquet extra): pipx inject imgclassify pyarrow"
    result = runner.invoke(app, ["predict", str(SAMPLES / "dog.jpg"), *LITE0, "-o", str(tmp_path / "new.parquet")])
    assert result.exit_code == 2 and hint in result.stderr and "pip install 'imgclassify[parquet]'" in result.stderr
    result = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and hint in result.stderr
    result = runner.invoke(app, ["merge", str(tmp_path / "all.parquet"), str(path)])
    assert result.exit_code == 2 and hint in result.stderr


# --- real runs ----------------------------------------------------------------------------------------


def _photos(root: Path) -> Path:
    """Photos at two levels, a broken file, a name that is not UTF-8, a non-image."""
    photos = root / "photos"
    (photos / "more").mkdir(parents=True)
    for name in ("kitten.jpg", "labrador.jpg", "dog.jpg", "brittany.jpg"):
        shutil.copyfile(SAMPLES / name, photos / name)
    shutil.copyfile(SAMPLES / "bus.jpg", photos / "more" / "img2.jpg")
    shutil.copyfile(os.fsencode(SAMPLES / "three_dogs.jpg"), os.fsencode(photos / "more" / LATIN1))
    (photos / "more" / "broken.jpg").write_bytes((SAMPLES / "kitten.jpg").read_bytes()[:3000])
    (photos / "notes.txt").write_text("not an image\n")
    return photos


RUNS = {
    "k1.jsonl": ["-o", "k1.jsonl"],
    "k3.jsonl": ["-k", "3", "--threshold", "0.6", "-o", "k3.jsonl"],
    "k3.parquet": ["-k", "3", "--threshold", "0.6", "-o", "k3.parquet"],
    "shard1.parquet": ["-k", "3", "--threshold", "0.6", "--shard", "1/2", "-o", "shard1.parquet"],
    "shard2.jsonl": ["-k", "3", "--threshold", "0.6", "--shard", "2/2", "-o", "shard2.jsonl"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``photos/`` classified with each of :data:`RUNS` (relative paths), and ``k1.parquet`` from stdout."""
    root = tmp_path_factory.mktemp("parquet")
    _photos(root)
    before = os.getcwd()
    os.chdir(root)
    try:
        runner = CliRunner()
        for args in RUNS.values():
            result = runner.invoke(app, ["predict", "photos/", *LITE0, *args])
            assert result.exit_code in (0, 1), result.stderr  # 1: the broken file is in this run's share
        result = runner.invoke(app, ["predict", "photos/", *LITE0, "-f", "parquet", "-q"])  # to a pipe
        assert result.exit_code == 1, result.stderr
        (root / "k1.parquet").write_bytes(result.stdout_bytes)
    finally:
        os.chdir(before)
    yield root


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])
def test_real_runs_read_back_exactly_as_json_lines(runs: Path, k: int) -> None:
    parquet, jsonl = list(read_records(runs / f"k{k}.parquet")), list(read_records(runs / f"k{k}.jsonl"))
    assert parquet == jsonl and len(parquet) == 7
    assert [list(record) for record in parquet] == [list(record) for record in jsonl]  # the keys in order too
    by_name = {Path(record["path"]).name: record for record in parquet}
    assert by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["class_id"] is None
    assert by_name[LATIN1]["path"] == f"photos/more/{LATIN1}" and by_name[LATIN1]["class_id"] is not None
    assert by_name["labrador.jpg"]["class_id"] == 208
    if k == 3:
        assert {record["confident"] for record in parquet} == {True, False, None}  # --threshold 0.6
        assert all(len(record["top_k"]) == 3 for record in parquet if record["error"] is None)
    else:
        assert {record["confident"] for record in parquet} == {None} and all("top_k" not in r for r in parquet)
        assert file_metadata(runs / "k1.parquet") == {"format_version": 1}  # stdout: no manifest
    table = pq.read_table(runs / f"k{k}.parquet")
    assert table.schema.remove_metadata().equals(SCHEMA)


@pytest.mark.slow
def test_the_file_metadata_holds_the_manifest(runs: Path) -> None:
    embedded = file_metadata(runs / "k3.parquet")
    assert embedded is not None and embedded["format_version"] == 1
    manifest = embedded["manifest"]
    beside = json.loads((runs / "k3.parquet.manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["run"]["format"] == "parquet"
    assert manifest["counts"] == beside["counts"] == {
        "inputs": 7, "classified": 6, "failed": 1, "skipped_non_images": 1, "already_done": 0,
    }  # fmt: skip
    # the same manifest, but the moment it was taken (the writer closes just before the run ends)
    different = {key for key in beside if beside[key] != manifest.get(key)}
    assert different <= {"finished_at", "elapsed_s"} and set(manifest) == set(beside)


@pytest.mark.slow
def test_merge_reads_and_writes_parquet(
    runs: Path, tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("k3.jsonl", "shard1.parquet", "shard2.jsonl"):
        for path in (runs / name, runs / f"{name}.manifest.json"):
            shutil.copyfile(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    single = list(read_records(tmp_path / "k3.jsonl"))
    assert 0 < len(list(read_records(tmp_path / "shard1.parquet"))) < len(single)
    result = runner.invoke(app, ["merge", "all.jsonl", "shard1.parquet", "shard2.jsonl"])  # parquet in
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "all.jsonl").read_text() == (tmp_path / "k3.jsonl").read_text()
    result = runner.invoke(app, ["merge", "all.parquet", "shard2.jsonl", "shard1.parquet"])  # parquet out
    assert result.exit_code == 0, result.stderr
    assert "merged 2 shards into all.parquet: 7 records (6 classified, 1 failed)" in result.stderr
    assert list(read_records(tmp_path / "all.parquet")) == single
    embedded = file_metadata(tmp_path / "all.parquet")
    assert embedded is not None
    beside = json.loads((tmp_path / "all.parquet.manifest.json").read_text())
    assert embedded["manifest"]["engine"]["name"] == "merged" and embedded["manifest"]["run"]["format"] == "parquet"
    assert {key for key in beside if beside[key] != embedded["manifest"].get(key)} <= {"finished_at"}
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.slow
def test_report_reads_parquet(runs: Path, tmp_path: Path, runner: CliRunner) -> None:
    def page(results: str) -> tuple[str, dict[str, Any]]:
        report = tmp_path / f"{results}.html"
        result = runner.invoke(app, ["report", str(runs / results), "-o", str(report), "--base-dir", str(runs)])
        assert result.exit_code == 0, result.stderr
        found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', report.read_text(), re.S)
        assert found is not None
        return result.stderr, json.loads(found.group(1))

    stderr, data = page("k3.parquet")
    summary = (
        f"7 records (6 classified, 1 failed), 6 classes, 6 thumbnails, manifest {runs / 'k3.parquet.manifest.json'}"
    )
    assert summary in stderr  # every photo found, the name that is not UTF-8 too
    assert [r["path"] for r in data["records"]] == [csv_text(r["path"]) for r in read_records(runs / "k3.jsonl")]
    _, from_jsonl = page("k3.jsonl")
    assert data["records"] == from_jsonl["records"] and data["counts"] == from_jsonl["counts"]  # the same page
