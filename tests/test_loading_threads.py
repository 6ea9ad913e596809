"""Decoding in threads (the in-process default): same batches, same order, failures by index,
a bounded number of images decoded ahead."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conftest import LABELLED, SAMPLES
from imgclassify.decode.decoder import Decoder
from imgclassify.decode.loading import default_threads, iter_batches
from imgclassify.models.registry import get_spec

DECODER = Decoder(get_spec("efficientnet_lite0").preprocess)


def test_threads_give_the_same_batches(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((SAMPLES / "dog.jpg").read_bytes()[:500])
    paths = [str(p) for p in sorted(LABELLED.glob("*.JPEG"))[:13]]
    paths[4:4] = [str(broken), str(tmp_path / "missing.jpg")]
    plain = list(iter_batches(paths, DECODER, batch_size=4, workers=0, threads=0))
    threaded = list(iter_batches(paths, DECODER, batch_size=4, workers=0, threads=3))
    assert (
        [b.indices for b in threaded]
        == [b.indices for b in plain]
        == [list(range(i, min(i + 4, 15))) for i in range(0, 15, 4)]
    )
    assert [b.errors for b in threaded] == [b.errors for b in plain]
    assert set(threaded[1].errors) == {4, 5} and threaded[1].tensor.shape[0] == 2
    assert all(a.tensor.equal(b.tensor) for a, b in zip(threaded, plain, strict=True))


def test_decoding_ahead_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    lock = threading.Lock()

    class Counting(Decoder):
        def try_decode(self, source):  # type: ignore[no-untyped-def]
            with lock:
                started.append(int(source))
            time.sleep(0.002)
            return None, "not decoded"

    paths = [str(i) for i in range(100)]
    batches = iter_batches(paths, Counting(DECODER.preprocess), batch_size=4, workers=0, threads=2)
    next(batches)
    time.sleep(0.2)
    assert len(started) <= 4 + 2 * 4 + 2  # the batch taken, then two batches and one per thread ahead
    assert [b.indices[0] for b in batches] == list(range(4, 100, 4))


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgclassify.decode.loading.available_cores", lambda: 2)
    assert default_threads(100, 8, workers=0) == 2
    assert default_threads(100, 8, workers=1) == 0  # decode processes instead
    assert default_threads(8, 8, workers=0) == 0  # one batch: nothing to overlap
    monkeypatch.setattr("imgclassify.decode.loading.available_cores", lambda: 16)
    assert default_threads(100, 8, workers=0) == 4
    monkeypatch.setenv("IMGCLASSIFY_DECODE_THREADS", "0")
    assert default_threads(100, 8, workers=0) == 0


def test_precision_advice_follows_the_cpu() -> None:
    from imgclassify.system.advice import precision_warning, speed_precision
    from imgclassify.system.capabilities import CpuFeatures
    from imgclassify.system.devices import Precision

    cascade_lake = CpuFeatures("Xeon", 2, avx2=True, avx512=True, avx512_bf16=False, amx=False, vnni=True)
    zen4 = CpuFeatures("EPYC", 2, avx2=True, avx512=True, avx512_bf16=True, amx=False, vnni=True)
    old = CpuFeatures("Core", 4, avx2=True, avx512=False, avx512_bf16=False, amx=False, vnni=False)
    assert "bf16 is emulated" in (precision_warning(Precision.BF16, "cpu", cascade_lake) or "")
    assert "use --precision int8" in (precision_warning(Precision.BF16, "cpu", cascade_lake) or "")
    assert "use fp32" in (precision_warning(Precision.BF16, "cpu", old) or "")
    assert precision_warning(Precision.BF16, "cpu", zen4) is None
    assert precision_warning(Precision.BF16, "cuda", cascade_lake) is None
    assert "no int8 dot products" in (precision_warning(Precision.INT8, "cpu", old) or "")
    assert precision_warning(Precision.INT8, "cpu", cascade_lake) is None
    assert [speed_precision(c) for c in (cascade_lake, zen4, old)] == [Precision.INT8, Precision.INT8, Precision.FP32]
