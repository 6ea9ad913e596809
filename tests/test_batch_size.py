"""The default batch size follows the device the model runs on (8 on the CPU, 64 on CUDA), in
``predict`` (the manifest records the resolved number), the Python API, the engines and ``serve``.

No GPU is needed: as in test_server_gpu_decode.py, a classifier that reports ``cuda`` while it
computes on the CPU stands in for one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import imgclassify.server as server
from conftest import LABELLED
from imgclassify import pipeline
from imgclassify.cli import app
from imgclassify.decode.loaders import open_batches
from imgclassify.decode.loading import DEFAULT_BATCH_SIZES, default_batch_size, resolve_batch_size
from imgclassify.errors import UsageError
from imgclassify.pipeline import Classifier
from imgclassify.run.engines.local import LocalEngine
from imgclassify.run.settings import RunSettings
from imgclassify.server.app import ServerConfig, UploadDecoding, create_app
from imgclassify.server.asgi import config_to_env

LITE0 = ["-m", "efficientnet_lite0", "-d", "cpu"]
PHOTOS = sorted(str(p) for p in LABELLED.iterdir())  # 50: more than one default batch on either device


class CountingForward(Classifier):
    """A classifier on the CPU that records the size of every forward pass."""

    def __init__(self, real: Classifier) -> None:
        super().__init__(real.plan, real.decoder, real.backend, real.label_set)
        self.sizes: list[int] = []

    def forward_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        return super().forward_uint8(batch)


class ReportsCuda(Classifier):
    """Says its device is CUDA; computes on the CPU with ``cpu`` (recording its forward passes)."""

    def __init__(self, cpu: CountingForward) -> None:
        super().__init__(cpu.plan, cpu.decoder, cpu.backend, cpu.label_set)
        self.cpu = cpu

    @property
    def device(self) -> torch.device:
        return torch.device("cuda")

    def forward_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        return self.cpu.forward_uint8(batch)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The (device, batch size) of every ``open_batches`` call of a classifier; loads on the CPU."""
    calls: list[tuple[str, int]] = []
    cpu = torch.device("cpu")

    def on_the_cpu(
        paths: Sequence[str], decoder: Any, device: torch.device, *, batch_size: int, workers: int, **more: Any
    ) -> Any:
        calls.append((device.type, batch_size))
        return open_batches(paths, decoder, cpu, batch_size=batch_size, workers=workers, **more)

    monkeypatch.setattr(pipeline, "open_batches", on_the_cpu)
    return calls


def test_the_table() -> None:
    assert DEFAULT_BATCH_SIZES == {"cpu": 8, "cuda": 64, "mps": 8}
    assert (default_batch_size("cpu"), default_batch_size("cuda"), default_batch_size("mps")) == (8, 64, 8)
    assert resolve_batch_size(None, "cuda:1") == 64 and resolve_batch_size(None, torch.device("cuda", 0)) == 64
    assert resolve_batch_size(None, torch.device("cpu")) == 8 and resolve_batch_size(None, "mps") == 8
    assert resolve_batch_size(16, "cuda") == 16 and resolve_batch_size(3, "cpu") == 3  # asked for: always wins
    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0"):
        resolve_batch_size(0, "cuda")


@pytest.mark.parametrize(
    ("device", "args", "expected", "sizes"),
    [
        ("cpu", [], 8, [8] * 6 + [2]),
        ("cuda", [], 64, [50]),
        ("cuda", ["-b", "16"], 16, [16, 16, 16, 2]),
        ("cpu", ["--batch-size", "16"], 16, [16, 16, 16, 2]),
    ],
)
def test_predict_resolves_the_batch_size_from_the_device_and_records_it(  # type: ignore[no-untyped-def]
    lite0, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[tuple[str, int]],
    device: str, args: list[str], expected: int, sizes: list[int],
) -> None:  # fmt: skip
    counting = CountingForward(lite0)
    loaded: Classifier = counting if device == "cpu" else ReportsCuda(counting)
    monkeypatch.setattr(pipeline, "build_classifier", lambda plan: loaded)  # what LocalEngine.start loads
    asked: list[int | None] = []
    engine_batches = LocalEngine.batches

    def spy(self: LocalEngine, paths: Sequence[str], settings: RunSettings) -> Any:
        asked.append(settings.batch_size)
        return engine_batches(self, paths, settings)

    monkeypatch.setattr(LocalEngine, "batches", spy)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", *PHOTOS, *LITE0, "-w", "0", "-o", str(out), *args])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["device"] == device
    assert manifest["run"]["batch_size"] == expected  # the number used, never null
    assert asked == [expected]  # the engine receives the resolved number
    assert opened == [(device, expected)]  # so does the classifier's loader
    assert counting.sizes == sizes  # and the forward passes have that size
    assert len(out.read_text().splitlines()) == 50


def test_resume_across_default_and_explicit_batch_sizes(runner: CliRunner, tmp_path: Path) -> None:
    """The batch size is not a resume key: a run without -b continues one with -b, and records 8."""
    out = tmp_path / "out.jsonl"
    first = runner.invoke(app, ["predict", *PHOTOS[:3], *LITE0, "-b", "2", "-o", str(out)])
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(app, ["predict", *PHOTOS[:5], *LITE0, "-o", str(out), "--resume"])
    assert again.exit_code == 0, again.stderr
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == PHOTOS[:5]
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["run"]["batch_size"] == 8 and manifest["resumed"]["already_done"] == 3


def test_python_api_and_engine_resolve_from_the_device(lite0, opened: list[tuple[str, int]]) -> None:  # type: ignore[no-untyped-def]
    counting = CountingForward(lite0)
    assert len(list(counting.predict(PHOTOS[:20], workers=0))) == 20
    assert counting.sizes == [8, 8, 4]
    counting.sizes.clear()
    assert len(list(counting.predict(PHOTOS[:20], batch_size=5, workers=0))) == 20
    assert counting.sizes == [5] * 4

    cuda = ReportsCuda(CountingForward(lite0))
    assert len(list(cuda.predict(PHOTOS[:10], workers=0))) == 10
    assert len(list(cuda.predict(PHOTOS[:10], batch_size=4, workers=0))) == 10
    engine = LocalEngine(lite0.plan)
    engine.classifier = cuda  # as start() leaves it
    settings = RunSettings.resolve(
        batch_size=None, top_k=1, threshold=None, workers=0, device=engine.device, num_classes=1000
    )
    records = [r for batch in engine.batches(PHOTOS[:10], settings) for r in batch]
    assert len(records) == 10
    assert opened == [("cpu", 8), ("cpu", 5), ("cuda", 64), ("cuda", 4), ("cuda", 64)]
    assert cuda.cpu.sizes == [10, 4, 4, 2, 10]


def test_server_resolves_max_batch_size_from_the_device(lite0) -> None:  # type: ignore[no-untyped-def]
    cpu_decoding = UploadDecoding(nvjpeg_works=lambda device: False, environ={})

    def served(classifier: Classifier, config: ServerConfig) -> tuple[int, int | None]:
        application = create_app(config, classifier=classifier, warm_up_async=False, upload_decoding=cpu_decoding)
        info = application.test_client().get("/info").get_json()
        return application.extensions["imgclassify"].batcher.max_batch_size, info["server"]["max_batch_size"]

    cuda = ReportsCuda(CountingForward(lite0))
    assert served(lite0, ServerConfig()) == (8, 8)
    assert served(cuda, ServerConfig()) == (64, 64)
    assert cuda.cpu.sizes == [1, 64]  # warmed up at the resolved size
    assert served(cuda, ServerConfig(max_batch_size=4)) == (4, 4)
    with pytest.raises(UsageError, match="--max-batch-size"):
        create_app(ServerConfig(max_batch_size=0), classifier=lite0, warm_up_async=False)


def test_server_max_batch_size_from_cli_and_environment(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerConfig.from_env({}).max_batch_size is None
    assert ServerConfig.from_env({"IMGCLASSIFY_MAX_BATCH_SIZE": ""}).max_batch_size is None
    assert ServerConfig.from_env({"IMGCLASSIFY_MAX_BATCH_SIZE": "32"}).max_batch_size == 32
    assert ServerConfig.from_env(config_to_env(ServerConfig())).max_batch_size is None  # to the workers and back
    configs: list[ServerConfig] = []
    monkeypatch.setattr(server, "serve", lambda config, **kwargs: configs.append(config))
    for args in ([], ["--max-batch-size", "16"], ["--no-batching"]):
        result = runner.invoke(app, ["serve", "-m", "efficientnet_lite0", "-d", "cpu", "-q", *args])
        assert result.exit_code == 0, result.stderr
    assert [c.max_batch_size for c in configs] == [None, 16, 1]
