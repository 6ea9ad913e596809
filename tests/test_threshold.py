"""``--threshold P``: records below it keep their class and say ``confident: false``; CLI, manifest,
``--resume``, the server's ``?threshold=``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SAMPLES, parse_jsonl
from imgclassify.cli import app
from imgclassify.errors import UsageError
from imgclassify.models.labels import generic_labels
from imgclassify.results.render import Renderer, check_threshold
from imgclassify.server.app import ServerConfig, create_app

LITE = ["-m", "efficientnet_lite0"]
# kitten: tiger_cat 0.5585; labrador: Labrador_retriever 0.9268 (EfficientNet-Lite0)
TWO = [str(SAMPLES / "kitten.jpg"), str(SAMPLES / "labrador.jpg")]


def invoke(runner: CliRunner, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_renderer_judges_at_the_threshold() -> None:
    import torch

    labels = generic_labels(3)
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.49, 0.5, 0.01]])
    records = Renderer(labels, threshold=0.5).render(["a", "b", "c", "d"], probs, {2: "broken"})
    assert [(r.class_id, r.confident) for r in records] == [(0, True), (2, True), (None, None), (1, True)]
    records = Renderer(labels, threshold=0.6).render(["a", "b"], probs[:2])
    assert [(r.class_id, r.confident) for r in records] == [(0, False), (2, True)]
    assert [r.confident for r in Renderer(labels).render(["a"], probs[:1])] == [None]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_threshold_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(UsageError, match="--threshold must be a probability from 0 to 1"):
        check_threshold(bad)


def test_cli_threshold_in_jsonl_and_csv(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "predict", *TWO, *LITE, "--threshold", "0.6")
    assert result.exit_code == 0, result.stderr
    rows = parse_jsonl(result.stdout)
    assert [(r["class_id"], r["confident"]) for r in rows] == [(282, False), (208, True)]
    plain = parse_jsonl(invoke(runner, "predict", *TWO, *LITE).stdout)
    assert [r["confident"] for r in plain] == [None, None]
    assert [r["class_id"] for r in plain] == [282, 208]  # the class is kept either way
    out = tmp_path / "out.csv"
    assert invoke(runner, "predict", *TWO, *LITE, "--threshold", "0.6", "-o", str(out)).exit_code == 0
    rows_csv = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    assert [(r["class_id"], r["confident"]) for r in rows_csv] == [("282", "false"), ("208", "true")]
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    assert manifest["run"]["threshold"] == 0.6


def test_cli_table_marks_unsure(runner: CliRunner) -> None:
    result = runner.invoke(app, ["predict", *TWO, *LITE, "--threshold", "0.6", "-f", "table"], env={"COLUMNS": "150"})
    lines = result.stdout.splitlines()
    assert "tiger_cat (282) unsure" in next(line for line in lines if "kitten.jpg" in line)
    assert "unsure" not in next(line for line in lines if "labrador.jpg" in line)


def test_bad_threshold_fails_before_the_model_loads(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.run.runner

    def no_plan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was planned")

    monkeypatch.setattr(imgclassify.run.runner, "plan_model", no_plan)
    result = invoke(runner, "predict", *TWO, *LITE, "--threshold", "1.5")
    assert result.exit_code == 2
    assert "--threshold must be a probability from 0 to 1 (such as 0.5), got 1.5" in result.stderr


def test_resume_refuses_another_threshold(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert invoke(runner, "predict", TWO[0], *LITE, "--threshold", "0.6", "-o", str(out)).exit_code == 0
    before = out.read_text()
    result = invoke(runner, "predict", *TWO, *LITE, "--threshold", "0.5", "-o", str(out), "--resume")
    assert result.exit_code == 2 and "threshold: 0.6 -> 0.5" in result.stderr
    assert out.read_text() == before
    result = invoke(runner, "predict", *TWO, *LITE, "--threshold", "0.6", "-o", str(out), "--resume")
    assert result.exit_code == 0
    assert [(r["class_id"], r["confident"]) for r in parse_jsonl(out.read_text())] == [(282, False), (208, True)]


def test_resume_refuses_a_csv_without_the_confident_column(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "old.csv"
    out.write_text("path,class_id,wnid,class_name,probability,top_k,error\nx.jpg,1,,a,0.5,,\n")
    result = invoke(runner, "predict", *TWO, *LITE, "-o", str(out), "--resume")
    assert result.exit_code == 2 and "no 'confident' column" in result.stderr


def test_server_threshold(lite0) -> None:  # type: ignore[no-untyped-def]
    application = create_app(ServerConfig(threshold=0.6), classifier=lite0, warm_up_async=False)
    client = application.test_client()

    def post(query: str, name: str) -> tuple[int, dict[str, object]]:
        data = {"file": [(io.BytesIO((SAMPLES / name).read_bytes()), name)]}
        response = client.post(f"/predict{query}", data=data, content_type="multipart/form-data")
        return response.status_code, response.get_json()

    status, body = post("", "kitten.jpg")
    assert status == 200 and body["class_id"] == 282 and body["confident"] is False
    status, body = post("?threshold=0.5", "kitten.jpg")
    assert body["class_id"] == 282 and body["confident"] is True
    status, body = post("?threshold=2", "kitten.jpg")
    assert status == 400 and body["error"] == "bad_threshold"
    assert client.get("/info").get_json()["server"]["threshold"] == 0.6
    plain = create_app(ServerConfig(), classifier=lite0, warm_up_async=False).test_client()
    data = {"file": [(io.BytesIO((SAMPLES / "kitten.jpg").read_bytes()), "kitten.jpg")]}
    body = plain.post("/predict", data=data, content_type="multipart/form-data").get_json()
    assert "confident" not in body  # the tutorial's answer, unchanged without a threshold
