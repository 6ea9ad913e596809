"""The CLI end to end: Typer's CliRunner in-process, and the installed command as a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import DENSENET_FILE, SAMPLES, parse_jsonl
from imgclassify.cli import app
from imgclassify.results.formats import CSV_COLUMNS

LITE = ["-m", "efficientnet_lite0"]
GOLDEN = Path(__file__).parent / "golden"


def invoke(runner: CliRunner, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def photos(tmp_path: Path, bad_files: dict[str, Path]) -> Path:
    """A folder: three photos (one nested), a corrupt one between them, a text file."""
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    shutil.copy(SAMPLES / "kitten.jpg", root / "01_kitten.jpg")
    shutil.copy(bad_files["corrupt"], root / "02_corrupt.jpg")
    shutil.copy(SAMPLES / "labrador.jpg", root / "10_labrador.jpg")
    shutil.copy(SAMPLES / "brittany.jpg", root / "nested" / "brittany.jpg")
    (root / "README.txt").write_text("not a photo")
    return root


def test_directory_with_corrupt_file(runner: CliRunner, photos: Path) -> None:
    result = invoke(runner, "predict", str(photos), *LITE)
    assert result.exit_code == 1
    rows = parse_jsonl(result.stdout)
    assert [Path(r["path"]).relative_to(photos).as_posix() for r in rows] == [  # type: ignore[arg-type]
        "01_kitten.jpg", "02_corrupt.jpg", "10_labrador.jpg", "nested/brittany.jpg",
    ]  # fmt: skip
    assert 281 <= rows[0]["class_id"] <= 285  # type: ignore[operator]
    assert rows[1]["error"] == "not an image, or a format Pillow cannot read" and rows[1]["class_id"] is None
    assert rows[2]["class_id"] == 208 and rows[3]["class_id"] == 215
    assert "3 classified, 1 failed, 1 non-image file skipped" in result.stderr


def test_all_good_exit_zero_quiet_is_silent(runner: CliRunner) -> None:
    result = invoke(runner, "predict", str(SAMPLES / "labrador.jpg"), *LITE, "-q")
    assert result.exit_code == 0 and result.stderr == ""
    assert parse_jsonl(result.stdout)[0]["class_id"] == 208


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_formats_parse_back(runner: CliRunner, photos: Path, fmt: str) -> None:
    result = invoke(runner, "predict", str(photos), *LITE, "-f", fmt, "-k", "3", "-b", "3")
    assert result.exit_code == 1
    if fmt == "json":
        rows = json.loads(result.stdout)
    elif fmt == "jsonl":
        rows = parse_jsonl(result.stdout)
    else:
        reader = csv.DictReader(io.StringIO(result.stdout, newline=""))
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = [
            {
                **raw,
                "class_id": int(raw["class_id"]) if raw["class_id"] else None,
                "top_k": json.loads(raw["top_k"]) if raw["top_k"] else [],
                "error": raw["error"] or None,
                "probability": float(raw["probability"]) if raw["probability"] else None,
            }
            for raw in reader
        ]
    assert len(rows) == 4
    good = rows[2]
    assert good["class_id"] == 208 and good["class_name"] == "Labrador_retriever" and good["wnid"] == "n02099712"
    assert len(good["top_k"]) == 3 and good["top_k"][0]["class_id"] == 208
    assert good["probability"] == good["top_k"][0]["probability"]
    assert rows[1]["error"] and rows[1]["class_id"] is None


def test_table_format(runner: CliRunner, photos: Path) -> None:
    result = invoke(runner, "predict", str(photos / "01_kitten.jpg"), *LITE, "-f", "table")
    assert "imgclassify: efficientnet_lite0" in result.stdout and "tiger_cat (282)" in result.stdout


def test_output_file_format_from_suffix(runner: CliRunner, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    result = invoke(runner, "predict", str(photos), *LITE, "-o", str(out))
    assert result.exit_code == 1 and result.stdout == ""
    assert out.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


@pytest.mark.parametrize(
    ("flags", "golden_file"),
    [
        # bus.jpg and kitten.jpg (shorter side at least 512, twice the resize size) are decoded at reduced scale
        ([], "samples_lite0_top3.jsonl"),
        (["--exact-decode"], "samples_lite0_top3_exact.jsonl"),  # every photo at full size
    ],
)
def test_samples_match_golden(runner: CliRunner, flags: list[str], golden_file: str) -> None:
    paths = sorted(str(p) for p in SAMPLES.glob("*.jpg"))
    result = invoke(runner, "predict", *paths, *LITE, "-k", "3", "-f", "jsonl", *flags)
    rows = parse_jsonl(result.stdout)
    golden = parse_jsonl((GOLDEN / golden_file).read_text())
    assert [Path(r["path"]).name for r in rows] == [Path(g["path"]).name for g in golden]  # type: ignore[arg-type]
    for row, gold in zip(rows, golden, strict=True):
        assert [c["class_id"] for c in row["top_k"]] == [c["class_id"] for c in gold["top_k"]]  # type: ignore[attr-defined]
        for c, g in zip(row["top_k"], gold["top_k"], strict=True):  # type: ignore[call-overload]
            assert c["probability"] == pytest.approx(g["probability"], abs=1e-4)


def test_stdin_globs_and_duplicates(runner: CliRunner, photos: Path) -> None:
    listing = f"{photos / '10_labrador.jpg'}\n{photos / 'nested' / 'brittany.jpg'}\n"
    result = invoke(runner, "predict", "-", str(photos / "**" / "*.jpg"), *LITE, input=listing)
    names = [Path(r["path"]).name for r in parse_jsonl(result.stdout)]  # type: ignore[arg-type]
    assert names == ["10_labrador.jpg", "brittany.jpg", "01_kitten.jpg", "02_corrupt.jpg"]


def test_no_images_is_a_usage_error_that_says_why(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b.txt").write_text("x")
    fix = ": give image files, directories or quoted globs\n"
    for args, message in (
        ([str(tmp_path)], f"no image found in {tmp_path} (2 non-image files skipped)"),
        ([str(tmp_path / "*.jpg")], f"no file matches {tmp_path / '*.jpg'}"),
        ([str(tmp_path / "missing.jpg")], f"{tmp_path / 'missing.jpg'} does not exist"),
        (["nothere.jpg", "gone.png"], "nothere.jpg, gone.png do not exist"),
    ):
        result = invoke(runner, "predict", *args, *LITE)
        assert result.exit_code == 2, args
        assert result.stderr == f"imgclassify: error: {message}{fix}" and result.stdout == ""
    (tmp_path / "notes.txt").unlink()
    result = invoke(runner, "predict", str(tmp_path), *LITE)
    assert "(1 non-image file skipped)" in result.stderr


@pytest.mark.parametrize("name", ["results.txt", "results.xyz", "results"])
def test_output_suffix_without_format_is_a_usage_error(runner: CliRunner, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE, "-o", str(out))
    assert result.exit_code == 2 and not out.exists()
    assert "names no format; give --format (table, json, jsonl, csv, parquet)" in result.stderr
    assert ".json, .jsonl, .ndjson, .csv, .parquet" in result.stderr
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE, "-o", str(out), "-f", "jsonl")
    assert result.exit_code == 0 and parse_jsonl(out.read_text())[0]["class_id"] == 282


def test_unknown_choice_names_the_choices(runner: CliRunner) -> None:
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE, "-f", "xml")
    assert result.exit_code == 2
    assert "'xml' is not a format; the formats are: table, json, jsonl, csv, parquet" in result.stderr
    assert "Value error" not in result.stderr
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE, "--precision", "int4")
    assert "'int4' is not a precision; the precisions are: fp32, bf16, fp16, int8" in result.stderr
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE, "-f", "CSV", "-q")
    assert result.exit_code == 0 and result.stdout.startswith("path,")


def test_help_names_values_not_python_types(runner: CliRunner) -> None:
    import typer.main

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout
    for name, command in commands.items():
        text = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"}).stdout
        assert not re.search(r"<(list\[|str>|int>|float>|bool>|Path>|file>|directory>)", text), (name, text)
        # the command list shows each command's whole short help, never cut with "..."
        assert re.search(rf"^  {name} +{re.escape(command.short_help)}$", top, flags=re.M), (name, top)
    assert "..." not in top.split("Commands:")[1]
    predict_help = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).stdout
    assert "Usage: imgclassify predict [OPTIONS] {PATH}..." in predict_help
    assert "-m, --model NAME" in predict_help and "-o, --output FILE" in predict_help
    assert "-f, --format table|json|jsonl|csv|parquet" in predict_help
    serve_help = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).stdout
    flat = re.sub(r"\s+", " ", serve_help).replace("start- up", "start-up")
    assert "-q, --quiet Only warnings and errors on stderr: no start-up line or request log." in flat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-b", "0"], "batch-size"),
        (["-k", "1001"], "--top-k must be between 1 and 1000"),
        (["-d", "gpu"], "invalid device"),
        (["-d", "cuda"], "CUDA is not available"),
        (["--precision", "fp16", "-d", "cpu"], "fp16 is not supported on the CPU"),
        (["-m", "resnet5"], "unknown model"),
        (["-f", "xml"], "xml"),
        (["--labels", "/nonexistent.json"], "cannot read labels file"),
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str], message: str) -> None:
    if "-m" not in args:
        args = [*args, *LITE]
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_default_model_offline_falls_back_with_one_warning(runner: CliRunner) -> None:
    result = invoke(runner, "predict", str(SAMPLES / "labrador.jpg"))
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "imgclassify: warning: no densenet121 weights (not cached, downloads off): using the bundled "
        "efficientnet_lite0; -m efficientnet_lite0 silences this"
    ]
    assert parse_jsonl(result.stdout)[0]["class_id"] == 208


def test_explicit_densenet_offline_fails_naming_the_fixes(runner: CliRunner, offline_empty_cache: Path) -> None:
    result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), "-m", "densenet121")
    assert result.exit_code == 2 and result.stdout == ""
    assert "--weights FILE" in result.stderr and "--model efficientnet_lite0" in result.stderr
    assert str(offline_empty_cache / "hub" / "checkpoints" / DENSENET_FILE) in result.stderr


def test_densenet_weights_and_cache_through_cli(
    runner: CliRunner, densenet_weights: Path, cached_densenet: Path
) -> None:
    a = invoke(
        runner,
        "predict",
        str(SAMPLES / "kitten.jpg"),
        "-m",
        "densenet121",
        "--weights",
        str(densenet_weights),
        "-k",
        "2",
    )
    b = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), "-k", "2")  # default model, from the cache
    assert a.exit_code == b.exit_code == 0
    assert "densenet121" in b.stderr and "warning" not in b.stderr
    assert parse_jsonl(a.stdout) == parse_jsonl(b.stdout)


def test_models_command(runner: CliRunner, cached_densenet: Path) -> None:
    rows = {r["name"]: r for r in json.loads(invoke(runner, "models", "-f", "json").stdout)}
    assert rows["efficientnet_lite0"]["weights"] == "bundled"
    assert rows["densenet121"]["weights"] == "cached" and rows["densenet121"]["input_size"] == 224
    assert rows["resnet50"]["weights"] == "needs download" and rows["resnet50"]["params_m"] == 25.6
    assert list(rows)[:2] == ["densenet121", "efficientnet_lite0"]
    table = invoke(runner, "models", "-f", "table").stdout
    assert "vit_b_16" in table and "bundled" in table


def test_help_and_models_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom imgclassify.cli import app\n"
        "for args in (['--help'], ['predict', '--help'], ['models', '-f', 'json']):\n"
        "    try:\n        app(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_installed_command_as_subprocess(tmp_path: Path) -> None:
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or shutil.which("imgclassify")
    assert exe, "the imgclassify command is not installed"
    env = {**os.environ, "TORCH_HOME": str(tmp_path), "IMGCLASSIFY_OFFLINE": "1"}
    out = subprocess.run(
        [exe, "predict", str(SAMPLES / "brittany.jpg"), str(SAMPLES / "dog.jpg"), "-m", "efficientnet_lite0", "-f", "csv"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(Path(r["path"]).name, r["class_id"]) for r in rows] == [("brittany.jpg", "215"), ("dog.jpg", "222")]
    assert "2 classified, 0 failed" in out.stderr
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("imgclassify ")


def test_offline_flag_never_downloads(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.models.weights as weights

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.delenv("IMGCLASSIFY_OFFLINE")
    monkeypatch.setattr(weights, "download", no_download)
    result = invoke(runner, "predict", str(SAMPLES / "labrador.jpg"), "--offline")
    assert result.exit_code == 0 and "(not cached, downloads off)" in result.stderr
    assert parse_jsonl(result.stdout)[0]["class_id"] == 208
