"""The run manifest beside every output, and a --resume that cannot mix runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SAMPLES, parse_jsonl
from imgclassify.cli import app

PHOTOS = [str(SAMPLES / "kitten.jpg"), str(SAMPLES / "labrador.jpg")]
LITE0 = ["-m", "efficientnet_lite0", "-d", "cpu"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_beside_the_output(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", *PHOTOS, str(tmp_path / "missing.jpg"), *LITE0, "-k", "3", "-o", str(out)])
    assert result.exit_code == 1, result.stderr
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    from imgclassify import __version__
    from imgclassify.models.registry import get_spec

    bundled = get_spec("efficientnet_lite0").bundled_path()
    assert bundled is not None
    assert manifest["imgclassify"] == __version__ and manifest["status"] == "complete"
    assert isinstance(manifest["command"], list)  # this process's argv; checked exactly in test_interrupt_resume
    assert manifest["model"] == {
        "name": "efficientnet_lite0",
        "family": "timm",
        "architecture": "tf_efficientnet_lite0",
        "kind": "registry",
    }
    assert manifest["weights"]["source"] == "bundled" and manifest["weights"]["sha256"] == sha256(bundled)
    assert manifest["labels"]["source"] == "bundled ImageNet-1k" and manifest["labels"]["count"] == 1000
    assert manifest["preprocessing"] == {
        "resize": 256, "crop": 224, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
        "fast_decode": False, "decode_mode": "reduced", "allow_truncated": False, "max_pixels": 178956970,
    }  # fmt: skip
    assert (manifest["device"], manifest["precision"], manifest["backend"]) == ("cpu", "fp32", "torch")
    assert manifest["run"]["batch_size"] == 8 and manifest["run"]["top_k"] == 3
    assert manifest["engine"]["name"] == "local"
    assert manifest["counts"] == {"inputs": 3, "classified": 2, "failed": 1, "skipped_non_images": 0, "already_done": 0}
    for name in ("python", "torch", "torchvision", "timm", "pillow"):
        assert manifest["versions"][name], name
    assert "openvino" not in manifest["versions"]  # only when used
    started = dt.datetime.fromisoformat(manifest["started_at"].replace("Z", "+00:00"))
    finished = dt.datetime.fromisoformat(manifest["finished_at"].replace("Z", "+00:00"))
    assert started.tzinfo is not None and started <= finished
    assert len(parse_jsonl(out.read_text())) == 3


def test_manifest_anywhere_also_for_stdout(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "run.json"
    target.parent.mkdir()
    result = runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-f", "csv", "--manifest", str(target)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("path,class_id")  # stdout still carries only data
    assert json.loads(target.read_text())["run"]["format"] == "csv"


def test_labels_hashes_of_the_file_and_of_the_labels(runner: CliRunner, tmp_path: Path) -> None:
    """``sha256`` is the file's (what sha256sum prints), ``parsed_sha256`` the labels' (what --resume
    compares): the tutorial's index_to_name.json holds the bundled ImageNet labels."""
    import hashlib
    from importlib import resources

    tutorial = SAMPLES / "index_to_name.json"
    for name, extra in (("a", []), ("b", ["--labels", str(tutorial)])):
        out = tmp_path / f"{name}.jsonl"
        assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out), *extra]).exit_code == 0
    a = json.loads((tmp_path / "a.jsonl.manifest.json").read_text())["labels"]
    b = json.loads((tmp_path / "b.jsonl.manifest.json").read_text())["labels"]
    assert a["parsed_sha256"] == b["parsed_sha256"] and (a["source"], b["source"]) == ("bundled ImageNet-1k", "file")
    assert b["sha256"] == hashlib.sha256(tutorial.read_bytes()).hexdigest() and b["path"] == str(tutorial)
    bundled = resources.files("imgclassify").joinpath("data", "imagenet_labels.json").read_bytes()
    assert a["sha256"] == hashlib.sha256(bundled).hexdigest()
    reordered = tmp_path / "labels.json"  # the same labels in another file: another file hash, same labels
    reordered.write_text(json.dumps(json.loads(tutorial.read_text()), indent=1))
    out = tmp_path / "c.jsonl"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out), "--labels", str(reordered)]).exit_code == 0
    c = json.loads((tmp_path / "c.jsonl.manifest.json").read_text())["labels"]
    assert (
        c["parsed_sha256"] == a["parsed_sha256"] and c["sha256"] == hashlib.sha256(reordered.read_bytes()).hexdigest()
    )
    assert c["sha256"] != b["sha256"]


def _refuse_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.pipeline as pipeline

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "build_classifier", refuse)


def test_resume_with_another_model_is_refused_and_the_output_untouched(
    runner: CliRunner, tmp_path: Path, densenet_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out)]).exit_code == 0
    with open(out, "a") as stream:
        stream.write('{"path": "cut sh')  # a last record cut short: a resume that went on would truncate it
    before = out.read_bytes()
    _refuse_model_loads(monkeypatch)
    args = ["predict", *PHOTOS, "-m", "densenet121", "--weights", str(densenet_weights), "-o", str(out), "--resume"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    message = result.stderr
    assert "written by a different run" in message and "model: efficientnet_lite0 -> densenet121" in message
    assert "weights sha256:" in message and "resize" not in message  # both resize to 256
    assert "interpolation: bicubic -> bilinear" in message and "mean: [0.5, 0.5, 0.5] -> [0.485" in message
    assert "run again with that run's options" in message and "new --output" in message
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "difference"),
    [
        (["-k", "3"], "top-k: 1 -> 3"),
        (["--precision", "bf16"], "precision: fp32 -> bf16"),
        (["--precision", "int8"], "calibration sha256: none -> "),
        (["--fast-decode"], "decode_mode: reduced -> fast"),
        (["--exact-decode"], "decode_mode: reduced -> exact"),
        (["--labels", "LABELS"], "labels sha256:"),
    ],
)
def test_resume_refuses_each_difference(
    runner: CliRunner, tmp_path: Path, extra: list[str], difference: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out)]).exit_code == 0
    before = out.read_bytes()
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([f"thing {i}" for i in range(1000)]))
    extra = [str(labels) if e == "LABELS" else e for e in extra]
    _refuse_model_loads(monkeypatch)  # every one of these is known before loading
    result = runner.invoke(app, ["predict", *PHOTOS, *LITE0, "-o", str(out), "--resume", *extra])
    assert result.exit_code == 2 and difference in result.stderr, result.stderr
    assert out.read_bytes() == before


def test_resume_of_an_output_from_before_decode_modes(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest without decode_mode was written by a version that decoded exactly unless
    --fast-decode: resuming it with today's default (reduced-scale decoding) is refused, with
    --exact-decode it appends."""
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "--exact-decode", "-o", str(out)]).exit_code == 0
    path = tmp_path / "out.jsonl.manifest.json"
    data = json.loads(path.read_text())
    assert data["preprocessing"]["decode_mode"] == "exact" and data["preprocessing"]["fast_decode"] is False
    del data["preprocessing"]["decode_mode"]  # as an older imgclassify wrote it
    path.write_text(json.dumps(data))
    before = out.read_bytes()
    with monkeypatch.context() as patch:
        _refuse_model_loads(patch)
        result = runner.invoke(app, ["predict", *PHOTOS, *LITE0, "-o", str(out), "--resume"])
        assert result.exit_code == 2 and "decode_mode: exact -> reduced" in result.stderr, result.stderr
        assert "fast_decode" not in result.stderr  # one difference, said once
        assert out.read_bytes() == before
    result = runner.invoke(app, ["predict", *PHOTOS, *LITE0, "-o", str(out), "--resume", "--exact-decode"])
    assert result.exit_code == 0, result.stderr
    assert len(parse_jsonl(out.read_text())) == 2


def test_resume_same_options_appends(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["predict", *PHOTOS, *LITE0, "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.stderr
    assert out.read_text().count("\n") == 3  # header + two records
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    assert manifest["counts"]["already_done"] == 1 and manifest["resumed"]["already_done"] == 1


def test_resume_without_manifest_warns_once_and_goes_on(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "old.jsonl"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out)]).exit_code == 0
    (tmp_path / "old.jsonl.manifest.json").unlink()  # as an older imgclassify left it
    result = runner.invoke(app, ["predict", *PHOTOS, *LITE0, "-o", str(out), "--resume"])
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "has no manifest" in warnings[0], result.stderr
    assert len(parse_jsonl(out.read_text())) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume"], "--resume needs --output"),
        (["--resume", "-o", "OUT/x.json"], "jsonl or csv"),
        (["--resume", "-f", "table", "-o", "OUT/x.txt"], "jsonl or csv"),
        (["--max-failures", "lots"], "--max-failures takes a count"),
        (["-o", "OUT/no/such/dir/x.jsonl"], "does not exist"),
        (["-o", "OUT"], "is a directory"),
        (["--manifest", "OUT/no/such/m.json"], "does not exist"),
        (["--exact-decode", "--fast-decode"], "--exact-decode and --fast-decode contradict each other"),
    ],
)
def test_bad_options_cost_no_model_load(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    _refuse_model_loads(monkeypatch)
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["predict", PHOTOS[0], *LITE0, *args])
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_offline_reaches_the_library_as_an_argument(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("IMGCLASSIFY_OFFLINE")
    result = runner.invoke(app, ["predict", PHOTOS[0], "-m", "densenet121", "--offline"])
    assert result.exit_code == 2 and "downloads are off" in result.stderr
    assert "IMGCLASSIFY_OFFLINE" not in os.environ  # nothing written to the environment


def test_server_info_has_the_same_provenance(lite0, tmp_path: Path, runner: CliRunner) -> None:  # type: ignore[no-untyped-def]
    from imgclassify.server.app import ServerConfig, create_app

    client = create_app(ServerConfig(), classifier=lite0, warm_up_async=False).test_client()
    info = client.get("/info").get_json()
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["predict", PHOTOS[0], *LITE0, "-o", str(out)]).exit_code == 0
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    for key in ("model", "weights", "labels", "preprocessing", "device", "precision", "backend", "versions"):
        assert info[key] == manifest[key], key
    assert info["engine"] == {"name": "server"} and info["server"]["max_batch_size"] == 8


def test_manifest_type_round_trips_what_a_run_wrote(runner: CliRunner, tmp_path: Path) -> None:
    """The typed Manifest reads a run's JSON back to the same JSON, key for key and in order."""
    from imgclassify.results.manifest import Manifest

    out = tmp_path / "out.jsonl"
    args = ["predict", *PHOTOS, *LITE0, "-k", "2", "--shard", "1/2", "--threshold", "0.3", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    data = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data and list(manifest.to_dict()) == list(data)
    assert manifest.provenance is not None and manifest.provenance.model.name == "efficientnet_lite0"
    assert manifest.run.shard == {"index": 1, "count": 2} and manifest.run.inputs == PHOTOS
    assert manifest.counts is not None and manifest.counts.found_before_sharding == 2
    assert manifest.differences(Manifest.from_dict(data)) == []


def test_manifest_type_keeps_unknown_keys_and_reads_old_ones() -> None:
    from imgclassify.results.manifest import Manifest, ManifestFormatError

    old: dict[str, Any] = {
        "imgclassify_manifest": 1, "imgclassify": "0.0.9", "status": "complete", "command": ["imgclassify"],
        "started_at": "2026-01-01T00:00:00Z", "finished_at": None, "engine": {"name": "local"},
        "run": {"top_k": 1, "threshold": None, "shard": None, "from_the_future": 1},
        "model": {"name": "densenet121", "family": "torchvision", "architecture": "densenet121"},
        "weights": {"source": "cache", "path": "w.pth", "sha256": "a" * 64},
        # before parsed_sha256 existed, labels.sha256 held the hash of the parsed labels
        "labels": {"source": "bundled ImageNet-1k", "path": None, "count": 1000, "sha256": "b" * 64},
        "preprocessing": {"resize": 256, "crop": 224}, "precision": "fp32", "backend": "torch",
        "counts": None, "a_new_section": {"x": 1},
    }  # fmt: skip
    manifest = Manifest.from_dict(old)
    written = manifest.to_dict()
    assert written["a_new_section"] == {"x": 1} and written["run"]["from_the_future"] == 1
    assert manifest.provenance is not None and manifest.provenance.labels is not None
    assert manifest.provenance.labels.resume_sha256() == "b" * 64
    new = Manifest.from_dict({**old, "labels": {**old["labels"], "sha256": "c" * 64, "parsed_sha256": "b" * 64}})
    assert manifest.differences(new) == []  # the same labels, whatever their file
    other = Manifest.from_dict({**old, "precision": "bf16", "run": {**old["run"], "top_k": 3}})
    assert manifest.differences(other) == ["precision: fp32 -> bf16", "top-k: 1 -> 3"]
    # before decode_mode: fast_decode false meant exact decoding, true reduced-scale and fast
    for fast, mode in ((False, "exact"), (True, "fast")):
        before = Manifest.from_dict({**old, "preprocessing": {"resize": 256, "fast_decode": fast}})
        assert before.provenance is not None and before.provenance.preprocessing.decode_mode == mode
        now = {"resize": 256, "fast_decode": fast, "decode_mode": mode}
        assert before.differences(Manifest.from_dict({**old, "preprocessing": now})) == []
        reduced = {"resize": 256, "fast_decode": False, "decode_mode": "reduced"}
        assert before.differences(Manifest.from_dict({**old, "preprocessing": reduced})) == [
            f"decode_mode: {mode} -> reduced"
        ]
    with pytest.raises(ManifestFormatError, match="not an imgclassify run manifest"):
        Manifest.from_dict({"status": "complete"})
    with pytest.raises(ManifestFormatError, match="run should be a JSON object"):
        Manifest.from_dict({**old, "run": [1]})


def test_run_settings_resolved_once_for_the_device_and_the_model() -> None:
    from imgclassify.errors import UsageError
    from imgclassify.run.settings import RunSettings

    settings = RunSettings.resolve(
        batch_size=None, top_k=5, threshold=0.5, workers=None, device="cuda:0", num_classes=10
    )
    assert settings == RunSettings(batch_size=64, top_k=5, threshold=0.5, workers=None)
    assert (
        RunSettings.resolve(batch_size=3, top_k=1, threshold=None, workers=0, device="cpu", num_classes=2).batch_size
        == 3
    )
    for bad, message in (
        ({"top_k": 11}, "--top-k must be between 1 and 10"),
        ({"top_k": 0}, "--top-k must be at least 1"),
        ({"workers": -1}, "--workers must be 0 or more"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"threshold": 1.5}, "--threshold must be a probability"),
    ):
        asked = {"batch_size": None, "top_k": 1, "threshold": None, "workers": None, **bad}
        with pytest.raises(UsageError, match=message):
            RunSettings.resolve(**asked, device="cpu", num_classes=10)  # type: ignore[arg-type]
