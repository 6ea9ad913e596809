"""``imgclassify models --search``: the registry and timm's pretrained models, by name."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from imgclassify.cli import app


def test_search_lists_registry_and_timm_names(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "--search", "convnext_tiny", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    names = [row["name"] for row in rows]
    assert names[0] == "convnext_tiny" and rows[0]["source"] == "registry"  # torchvision's, first
    assert "timm:convnext_tiny.fb_in22k" in names and "timm:convnext_tiny.fb_in1k" in names
    timm_rows = [row for row in rows if row["source"] == "timm"]
    assert all(row["name"].startswith("timm:convnext_tiny") for row in timm_rows)
    assert [row["name"] for row in timm_rows] == sorted(row["name"] for row in timm_rows)
    assert {row["weights"] for row in timm_rows} <= {"cached", "needs download"}


def test_search_by_tag_and_nothing_found(runner: CliRunner) -> None:
    rows = json.loads(runner.invoke(app, ["models", "-s", "fb_in22k", "-f", "json"]).stdout)
    assert "timm:convnext_tiny.fb_in22k" in [row["name"] for row in rows]
    assert all("fb_in22k" in row["name"] for row in rows)
    assert json.loads(runner.invoke(app, ["models", "-s", "no-such-model-anywhere", "-f", "json"]).stdout) == []


def test_plain_listing_keeps_its_columns(runner: CliRunner) -> None:
    rows = json.loads(runner.invoke(app, ["models", "-f", "json"]).stdout)
    assert set(rows[0]) == {"name", "params_m", "input_size", "top1", "weights"}
    assert not any(row["name"].startswith("timm:") for row in rows)
