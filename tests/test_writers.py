"""Writers against golden files (exact bytes) and parsed back field by field."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from imgclassify.results.formats import CSV_COLUMNS, OutputFormat, make_writer
from imgclassify.results.records import Candidate, Prediction

GOLDEN = Path(__file__).parent / "golden"

RECORDS = [
    Prediction(
        "photos/kitten.jpg",
        (
            Candidate(282, "n02123159", "tiger_cat", 0.558486),
            Candidate(281, "n02123045", "tabby", 0.328117),
            Candidate(285, "n02124075", "Egyptian_cat", 0.06),
        ),
    ),
    Prediction("photos/broken.jpg", error="truncated image file"),
    Prediction('odd, "quoted"\nnamé.png', (Candidate(208, "n02099712", "Labrador_retriever", 0.926773),)),
]


def render(fmt: OutputFormat, top_k: int, batches: list[list[Prediction]]) -> str:
    stream = io.StringIO()
    writer = make_writer(fmt, stream, top_k=top_k, model_name="efficientnet_lite0")
    for batch in batches:
        writer.write(batch)
    writer.close()
    return stream.getvalue()


def top1(records: list[Prediction]) -> list[Prediction]:
    return [Prediction(r.path, r.top[:1], r.error) for r in records]


CASES = [
    ("jsonl", OutputFormat.JSONL, 1),
    ("jsonl", OutputFormat.JSONL, 3),
    ("json", OutputFormat.JSON, 1),
    ("json", OutputFormat.JSON, 3),
    ("csv", OutputFormat.CSV, 1),
    ("csv", OutputFormat.CSV, 3),
]


@pytest.mark.parametrize(("suffix", "fmt", "k"), CASES)
def test_golden(suffix: str, fmt: OutputFormat, k: int) -> None:
    records = RECORDS if k > 1 else top1(RECORDS)
    text = render(fmt, k, [records[:2], records[2:]])
    golden = GOLDEN / f"records_top{k}.{suffix}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_same_output_whatever_the_batching() -> None:
    for fmt in (OutputFormat.JSONL, OutputFormat.JSON, OutputFormat.CSV):
        assert (
            render(fmt, 3, [RECORDS])
            == render(fmt, 3, [[r] for r in RECORDS])
            == render(fmt, 3, [RECORDS[:1], [], RECORDS[1:]])
        )


def check_fields(rows: list[dict[str, object]], k: int) -> None:
    assert [r["path"] for r in rows] == [r.path for r in RECORDS]
    ok, bad, odd = rows
    assert (ok["class_id"], ok["wnid"], ok["class_name"], ok["probability"], ok["error"]) == (
        282,
        "n02123159",
        "tiger_cat",
        0.558486,
        None,
    )
    assert (bad["class_id"], bad["wnid"], bad["class_name"], bad["probability"], bad["error"]) == (
        None,
        None,
        None,
        None,
        "truncated image file",
    )
    assert odd["class_id"] == 208 and odd["class_name"] == "Labrador_retriever"
    if k > 1:
        assert ok["top_k"] == [c.to_dict() for c in RECORDS[0].top]
        assert bad["top_k"] == []
    else:
        assert "top_k" not in ok


@pytest.mark.parametrize("k", [1, 3])
def test_parse_back_json_and_jsonl(k: int) -> None:
    records = RECORDS if k > 1 else top1(RECORDS)
    check_fields([json.loads(line) for line in render(OutputFormat.JSONL, k, [records]).splitlines()], k)
    check_fields(json.loads(render(OutputFormat.JSON, k, [records])), k)


@pytest.mark.parametrize("k", [1, 3])
def test_parse_back_csv(k: int) -> None:
    records = RECORDS if k > 1 else top1(RECORDS)
    reader = csv.DictReader(io.StringIO(render(OutputFormat.CSV, k, [records]), newline=""))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    rows: list[dict[str, object]] = []
    for raw in reader:
        row: dict[str, object] = {
            "path": raw["path"],
            "class_id": int(raw["class_id"]) if raw["class_id"] else None,
            "wnid": raw["wnid"] or None,
            "class_name": raw["class_name"] or None,
            "probability": float(raw["probability"]) if raw["probability"] else None,
            "error": raw["error"] or None,
        }
        if raw["top_k"]:
            row["top_k"] = json.loads(raw["top_k"])
        rows.append(row)
    check_fields(rows, k)


def test_empty_json_is_a_valid_array() -> None:
    assert json.loads(render(OutputFormat.JSON, 1, [])) == []


def test_table_lists_every_file_with_model_title(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "150")
    text = render(OutputFormat.TABLE, 3, [RECORDS[:1], RECORDS[1:]])
    assert "imgclassify: efficientnet_lite0" in text
    assert text.count("path") == 1  # one header for all batches
    assert "photos/kitten.jpg" in text and "tiger_cat (282)" in text and "0.5585" in text and "tabby (281)" in text
    assert "error: truncated image file" in text


JUDGED = [
    Prediction("sure.jpg", (Candidate(208, "n02099712", "Labrador_retriever", 0.926773),), confident=True),
    Prediction("unsure.jpg", (Candidate(282, "n02123159", "tiger_cat", 0.558486),), confident=False),
    Prediction("broken.jpg", error="truncated image file"),
]


def test_confident_in_every_format(monkeypatch: pytest.MonkeyPatch) -> None:
    jsonl = [json.loads(line) for line in render(OutputFormat.JSONL, 1, [JUDGED]).splitlines()]
    assert [r["confident"] for r in jsonl] == [True, False, None]
    assert list(jsonl[0])[-1] == "confident"  # the last key, after error
    assert [r["confident"] for r in json.loads(render(OutputFormat.JSON, 1, [JUDGED]))] == [True, False, None]
    rows = list(csv.reader(io.StringIO(render(OutputFormat.CSV, 1, [JUDGED]), newline="")))
    assert rows[0][-1] == "confident" and [r[-1] for r in rows[1:]] == ["true", "false", ""]
    monkeypatch.setenv("COLUMNS", "150")
    table = render(OutputFormat.TABLE, 1, [JUDGED]).splitlines()
    assert "tiger_cat (282) unsure" in next(line for line in table if "unsure.jpg" in line)
    assert "unsure" not in next(line for line in table if "sure.jpg" in line and "unsure.jpg" not in line)
