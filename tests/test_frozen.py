"""The frozen TorchScript graph on the CPU: made only for runs long enough to repay its tracing,
used for the planned batch shape only, and as exact as eager (fp32) within rounding."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn

from conftest import LABELLED, SAMPLES
from imgclassify import load_classifier
from imgclassify.inference import Backend, create_backend
from imgclassify.inference.frozen import MIN_BATCHES, FrozenGraphBackend
from imgclassify.models.registry import Interpolation, PreprocessConfig
from imgclassify.system.devices import Precision

CONFIG = PreprocessConfig(32, 32, Interpolation.BILINEAR, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    for module in net:
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so folding them matters
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net


def frozen(precision: Precision) -> FrozenGraphBackend:
    backend = create_backend(
        Backend.TORCH, small_net(), preprocess=CONFIG, device=torch.device("cpu"), precision=precision,
        model_name="small", weights_file=Path("unused"),
    )  # fmt: skip
    inner = cast(Any, backend).inner
    assert isinstance(inner, FrozenGraphBackend)
    return inner


def batch(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def test_fp32_needs_a_longer_run_than_bf16() -> None:
    # bf16 eager casts every weight on every pass, so a graph pays within a few batches; fp32
    # gains 15-30% per batch against about five batches' worth of tracing
    assert MIN_BATCHES[Precision.BF16] == 4 and MIN_BATCHES[Precision.FP32] == 32
    runs = {}
    for precision in (Precision.BF16, Precision.FP32):
        backend = frozen(precision)
        backend.plan(4, 8)
        backend(batch(4))
        backend(batch(4))
        runs[precision] = [g is not None for g in backend.graphs.values()]
    assert runs == {Precision.BF16: [True], Precision.FP32: []}


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
def test_a_graph_only_for_runs_that_repay_it(precision: Precision) -> None:
    backend = frozen(precision)
    assert backend.name == f"torch-frozen-{precision.value}"
    backend.plan(4, MIN_BATCHES[precision] - 1)  # too short a run: eager throughout
    backend(batch(4))
    assert backend.graphs == {}
    backend.plan(4, MIN_BATCHES[precision])
    backend(batch(3))  # another shape (the last, smaller batch): eager
    backend(batch(3))
    assert backend.graphs == {}
    backend(batch(4))  # the first batch of the planned shape: eager, so the first records come out first
    assert backend.graphs == {}
    backend(batch(4))
    assert list(backend.graphs) == [(4, 3, 32, 32)] and backend.graphs[(4, 3, 32, 32)] is not None


def test_fp32_graph_agrees_with_eager_within_rounding() -> None:
    backend = frozen(Precision.FP32)
    x = batch(4)
    eager = backend(x)
    backend.plan(4, 1000)
    assert torch.equal(backend(x), eager)  # the first planned batch is eager
    graph = backend(x)
    assert backend.graphs[(4, 3, 32, 32)] is not None
    assert torch.equal(graph.argmax(1), eager.argmax(1))
    assert (graph - eager).abs().max() < 1e-6


def test_a_graph_that_disagrees_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = frozen(Precision.FP32)
    real_freeze = torch.jit.freeze

    def freeze_then_break(module: Any, *args: Any, **kwargs: Any) -> Any:
        graph = real_freeze(module, *args, **kwargs)
        return lambda x: graph(x) + torch.arange(10.0)  # logits off by up to 9: not the same model

    monkeypatch.setattr(torch.jit, "freeze", freeze_then_break)
    backend.plan(4, 1000)
    backend(batch(4))
    eager = backend(batch(4))
    assert backend.graphs == {(4, 3, 32, 32): None}  # tried once, dropped, eager from then on
    backend.enabled = False
    assert torch.equal(backend(batch(4)), eager)


@pytest.mark.slow
def test_long_fp32_runs_use_the_graph_with_the_same_results() -> None:
    photos = sorted(SAMPLES.glob("*.jpg")) + sorted(LABELLED.glob("*.JPEG"))
    clf = load_classifier("efficientnet_lite0", device="cpu")
    short = list(clf.predict(photos[:16], batch_size=1, workers=0, top_k=3))  # 16 batches: eager
    backend = cast(Any, clf.backend).inner
    assert backend.graphs == {}
    long = list(clf.predict(photos, batch_size=1, workers=0, top_k=3))  # 57 batches of one: a graph
    assert [g is not None for g in backend.graphs.values()] == [True]
    backend.enabled = False
    eager = list(clf.predict(photos, batch_size=1, workers=0, top_k=3))
    assert [c.class_id for c in eager[0].top] == [c.class_id for c in short[0].top]
    for a, b in zip(long, eager, strict=True):
        assert [c.class_id for c in a.top] == [c.class_id for c in b.top]
        # the last of the 6 printed decimals may move, as it does between CPUs (README, "Output")
        assert max(abs((x.probability or 0) - (y.probability or 0)) for x, y in zip(a.top, b.top, strict=True)) <= 1e-5
