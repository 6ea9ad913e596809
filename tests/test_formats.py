"""The formats' table (``OutputFormat``): every format's suffixes and names, writer -> reader round trips,
and the one rule for a JSON Lines line cut short (readers skip it, ``--resume`` and the sort journal
truncate it, a damaged line before the last is an error everywhere)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from imgclassify.errors import UsageError
from imgclassify.results.formats import (
    SUFFIX_FORMATS,
    JsonLineError,
    JsonLines,
    OutputFormat,
    ResultsFormatError,
    detect_format,
    format_for_suffix,
    read_records,
    readable_format,
)
from imgclassify.results.records import Candidate, Prediction
from imgclassify.results.resume import recorded_paths
from imgclassify.run.sorting import JOURNAL_NAME, Sorter, SortOptions

LATIN1 = b"caf\xe9 \xff.jpg".decode("utf-8", errors="surrogateescape")  # a file name that is not UTF-8
READABLE = [fmt for fmt in OutputFormat if fmt.record_format.readable]
APPENDABLE = [fmt for fmt in OutputFormat if fmt.record_format.appendable]


def predictions(k: int) -> list[Prediction]:
    """Records with k candidates each, an error, every value of ``confident``, odd and non-UTF-8 names."""

    def top(cid: int) -> tuple[Candidate, ...]:
        found = (
            Candidate(cid, f"n0{cid}", f"class {cid}", 0.5123456789),
            Candidate(cid + 1, None, 'quoted, "name"', 0.25),
            Candidate(cid + 2, "n0x", "névé", 1e-7),
        )
        return found[:k]

    return [
        Prediction("photos/a.jpg", top(282), confident=True),
        Prediction("photos/broken.jpg", error='truncated, "image" file'),
        Prediction(f"photos/{LATIN1}", top(7), confident=False),
        Prediction('odd, "quoted"\nnamé.png', top(208)),
        Prediction(LATIN1, error="file not found"),
    ]


def write(path: Path, fmt: OutputFormat, records: list[Prediction], top_k: int) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = fmt.record_format.writer(stream, top_k=top_k, model_name="fake")
        writer.write(records[:2])
        writer.write(records[2:])
        writer.close()
    return path


# --- the table ----------------------------------------------------------------------------------


def test_every_row_is_its_format() -> None:
    names = [fmt.value for fmt in OutputFormat]
    assert names == ["table", "json", "jsonl", "csv", "parquet"] and len(set(names)) == len(names)
    for fmt in OutputFormat:
        assert fmt.record_format.name == fmt.value == fmt
        assert OutputFormat(fmt.value) is fmt
    assert [fmt.value for fmt in READABLE] == ["json", "jsonl", "csv", "parquet"]
    assert APPENDABLE == [OutputFormat.JSONL, OutputFormat.CSV]


def test_every_suffix_maps_back_to_its_format(tmp_path: Path) -> None:
    seen: set[str] = set()
    for fmt in OutputFormat:
        for suffix in fmt.record_format.suffixes:
            assert suffix not in seen and suffix == suffix.lower() and suffix.startswith(".")
            seen.add(suffix)
            assert format_for_suffix(Path(f"out{suffix}")) is fmt
            assert format_for_suffix(Path(f"OUT{suffix.upper()}")) is fmt
            assert SUFFIX_FORMATS[suffix] is fmt
            if fmt.record_format.readable:
                assert detect_format(tmp_path / f"missing{suffix}") is fmt  # the suffix alone: no file read
    assert set(SUFFIX_FORMATS) == seen == {".json", ".jsonl", ".ndjson", ".csv", ".parquet"}
    assert format_for_suffix(Path("out.txt")) is None and format_for_suffix(Path("out")) is None


def test_report_format_takes_the_readable_names_only() -> None:
    assert readable_format("JSONL") is OutputFormat.JSONL
    for fmt in READABLE:
        assert readable_format(fmt.value) is fmt
    with pytest.raises(ResultsFormatError, match=r"unknown --format 'table'; use json, jsonl, csv or parquet"):
        readable_format("table")
    with pytest.raises(ResultsFormatError, match="unknown --format 'xml'"):
        readable_format("xml")


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("fmt", READABLE, ids=lambda fmt: fmt.value)
def test_every_readable_format_round_trips(tmp_path: Path, fmt: OutputFormat, k: int) -> None:
    """writer -> reader -> Prediction gives the records back (CSV: names as ``resume_key`` spells them)."""
    records = predictions(k)
    path = write(tmp_path / f"out.{fmt.value}", fmt, records, top_k=k)
    key = fmt.record_format.resume_key
    expected = [dataclasses.replace(p, path=key(p.path)) for p in records]
    back = list(read_records(path))
    assert [Prediction.from_dict(r) for r in back] == expected
    assert back == [p.to_dict(top_k=k > 1) for p in expected]
    sniffed = path.rename(tmp_path / "out.txt")  # no telling suffix: the content says the format
    assert detect_format(sniffed) is fmt
    assert [Prediction.from_dict(r) for r in read_records(sniffed)] == expected
    if fmt.record_format.appendable:  # --resume finds every record, as the runner compares them
        assert recorded_paths(sniffed, fmt)[0] == {key(p.path) for p in records}
        assert key(LATIN1) in recorded_paths(sniffed, fmt)[0]


def test_table_is_written_not_read(tmp_path: Path) -> None:
    stream = io.StringIO()
    writer = OutputFormat.TABLE.record_format.writer(stream, top_k=3, model_name="fake")
    writer.write(predictions(3))
    writer.close()
    assert "class 282" in stream.getvalue()
    path = tmp_path / "out.txt"
    path.write_text(stream.getvalue())
    with pytest.raises(ResultsFormatError, match="cannot be read back"):
        list(read_records(path, OutputFormat.TABLE))
    with pytest.raises(UsageError, match="--resume works with --format jsonl or csv"):
        recorded_paths(path, OutputFormat.TABLE)


# --- the one rule for a line cut short ------------------------------------------------------------


def test_json_lines_rule() -> None:
    lines = JsonLines(io.StringIO('{"a": 1}\n\n{"a": 2}\n{"a": 3', newline="\n"))
    assert [value for _, value in lines] == [{"a": 1}, {"a": 2}]  # a last line without its newline: cut
    assert lines.cut == '{"a": 3'
    lines = JsonLines(io.StringIO('{"a": 1}\n{"a": 2}', newline="\n"))
    assert list(lines) == [(1, {"a": 1})] and lines.cut == '{"a": 2}'  # JSON, but its newline never written
    lines = JsonLines(io.StringIO('{"a": 1}\n{"a": \n', newline="\n"))
    assert [number for number, _ in lines] == [1] and lines.cut == '{"a": \n'  # a last line that is not JSON
    lines = JsonLines(io.StringIO('{"a": 1}\n', newline="\n"))
    assert list(lines) == [(1, {"a": 1})] and lines.cut is None
    for text in ('{"a": 1}\nnot json\n{"a": 2}\n', '{"a": 1}\nnot json\n{"a": 2', "not json\n\n"):
        with pytest.raises(JsonLineError, match=r"line [12] is not JSON") as caught:
            list(JsonLines(io.StringIO(text, newline="\n")))
        assert caught.value.number == text.splitlines().index("not json") + 1


def _jsonl(tmp_path: Path) -> tuple[Path, bytes]:
    path = write(tmp_path / "out.jsonl", OutputFormat.JSONL, predictions(3), top_k=3)
    return path, path.read_bytes()


@pytest.mark.parametrize("cut", ["mid-record", "mid-character", "no-newline"])
def test_a_cut_last_line_is_skipped_by_readers_and_truncated_by_resume(tmp_path: Path, cut: str) -> None:
    path, whole = _jsonl(tmp_path)
    last = b'{"path": "b\xc3\xa9 last.jpg", "class_id": 1, "error": null}\n'
    partial = {"mid-record": last[:20], "mid-character": last[: last.index(b"\xa9")], "no-newline": last[:-1]}[cut]
    path.write_bytes(whole + partial)
    expected = [p.to_dict(top_k=True) for p in predictions(3)]
    assert list(read_records(path)) == expected  # report and merge read these
    done, _ = recorded_paths(path, OutputFormat.JSONL)
    assert done == {p.path for p in predictions(3)}
    assert path.read_bytes() == whole  # truncated to the whole records: the next append starts a line
    assert list(read_records(path)) == expected


def test_a_bad_line_before_the_last_is_an_error_for_readers_and_resume(tmp_path: Path) -> None:
    path, whole = _jsonl(tmp_path)
    lines = whole.splitlines(keepends=True)
    damaged = b"".join([lines[0], lines[1][:15] + b"\n", *lines[2:]])
    path.write_bytes(damaged)
    with pytest.raises(ResultsFormatError, match=r"out.jsonl: line 2 is not JSON"):
        list(read_records(path))
    with pytest.raises(UsageError, match=r"--resume: .*out.jsonl: line 2 is not JSON"):
        recorded_paths(path, OutputFormat.JSONL)
    assert path.read_bytes() == damaged  # nothing cut away
    path.write_bytes(b"".join([lines[0], b'["not", "a record"]\n', *lines[1:]]))
    with pytest.raises(ResultsFormatError, match="line 2: not a result record"):
        list(read_records(path))
    with pytest.raises(UsageError, match="line 2 is not a result record"):
        recorded_paths(path, OutputFormat.JSONL)


def _kitten(tmp_path: Path, name: str) -> Prediction:
    source = tmp_path / "src" / name
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(b"not decoded: sorting copies bytes")
    return Prediction(str(source), (Candidate(282, "n02123159", "tiger_cat", 0.9),))


def test_the_sort_journal_follows_the_rule(tmp_path: Path) -> None:
    out = tmp_path / "sorted"
    first = Sorter(SortOptions(out))
    first.sort([_kitten(tmp_path, "a.jpg")])
    first.close()
    journal = out / JOURNAL_NAME
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"source": "/x/cut.jpg", "destinat')  # a run killed mid-write
    dry = Sorter(SortOptions(out, dry_run=True))
    assert set(dry.done) == {str(tmp_path / "src" / "a.jpg")}
    dry.sort([_kitten(tmp_path, "b.jpg")])
    dry.close()
    assert journal.read_bytes().endswith(b"destinat")  # a dry run changes nothing
    second = Sorter(SortOptions(out))
    second.sort([_kitten(tmp_path, "a.jpg"), _kitten(tmp_path, "b.jpg")])
    second.close()
    assert (second.counts.already_sorted, second.counts.sorted) == (1, 1)
    third = Sorter(SortOptions(out))  # the cut line was truncated before the append: every line whole
    assert set(third.done) == {str(tmp_path / "src" / n) for n in ("a.jpg", "b.jpg")}
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().count(b"\n") == 2

    journal.write_bytes(b"not json\n" + journal.read_bytes())
    with pytest.raises(UsageError, match=r"journal .*: line 1 is not JSON"):
        Sorter(SortOptions(out))
    journal.write_bytes(b'{"source": 1}\n' + whole)
    with pytest.raises(UsageError, match="line 1 is not a journal entry"):
        Sorter(SortOptions(out))


def test_a_cut_last_csv_record_is_skipped_by_readers(tmp_path: Path) -> None:
    """The CSV reader (report, merge) follows the same rule: a last record without its line ending
    was cut short by a killed run, and is skipped; the records before it are read."""
    path = write(tmp_path / "out.csv", OutputFormat.CSV, predictions(3), top_k=3)
    whole = path.read_bytes()
    expected = list(read_records(path))
    assert len(expected) == len(predictions(3)) > 1
    path.write_bytes(whole + b'"b\xc3\xa9 cut.jpg",1,n0,na')
    assert list(read_records(path)) == expected
    path.write_bytes(whole[:-1])  # the last record whole but for its line ending: still cut
    assert list(read_records(path)) == expected[:-1]
