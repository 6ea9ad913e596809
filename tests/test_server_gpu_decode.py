"""`imgclassify serve` with GPU decoding, run on the CPU: request threads submit bytes, the batcher
decodes every gathered request's uploads in one batched call, then runs one forward pass.

As in test_gpu_decode.py, torchvision's CPU libjpeg ``decode_jpeg`` stands in for nvJPEG, and a
classifier that reports ``cuda`` (its model still runs on the CPU) makes the server choose GPU
decoding the way it does on a GPU. No test here needs one.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import SAMPLES
from imgclassify.decode.gpu import GpuBatchDecoder, nvjpeg_decode
from imgclassify.pipeline import Classifier
from imgclassify.server.app import ServerConfig, UploadDecoding, create_app
from imgclassify.server.batching import DynamicBatcher, Prepared

CPU = torch.device("cpu")
PHOTOS = sorted(p.name for p in SAMPLES.glob("*.jpg"))
#: the sample photos of at least twice the resize size (256): by default the CPU decodes them at
#: reduced scale on the GPU path too (gpu.needs_cpu_decode), so they never reach nvJPEG
REDUCED = [name for name in PHOTOS if min(Image.open(SAMPLES / name).size) >= 512]
REDUCED_FALLBACK = "reduced-scale decoding (--exact-decode: nvJPEG)"


class ReportsCuda(Classifier):
    """``lite0`` under another name: says its device is CUDA, computes on the CPU."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda")


def reports_cuda(classifier: Classifier) -> ReportsCuda:
    return ReportsCuda(classifier.plan, classifier.decoder, classifier.backend, classifier.label_set)


class CountingDecoder:
    """A :class:`GpuBatchDecoder` on the CPU (libjpeg for nvJPEG) that records its calls."""

    def __init__(self, classifier: Classifier) -> None:
        self.calls: list[int] = []  # uploads per call
        self.jpeg_calls: list[int] = []  # files per batched "nvJPEG" call
        self.gpu = GpuBatchDecoder(classifier.decoder, CPU, decode_jpeg=self._jpeg)

    def _jpeg(self, tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        self.jpeg_calls.append(len(tensors))
        return nvjpeg_decode(tensors, device)

    def __call__(self, items: Sequence[tuple[str, bytes | None]]) -> Prepared:
        self.calls.append(len(items))
        return self.gpu(items)


def gpu_app(classifier: Classifier, decoder: Any, **config: Any) -> Any:
    """The app on a CUDA-reporting ``classifier``, uploads decoded by ``decoder(classifier)``."""
    decoding = UploadDecoding(nvjpeg_works=lambda device: True, environ={}, decoder=decoder)
    app = create_app(ServerConfig(**config), classifier=reports_cuda(classifier), warm_up_async=False,
                     upload_decoding=decoding)  # fmt: skip
    app.testing = True
    return app


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bad_and_odd_uploads() -> dict[str, bytes]:
    """Each goes to the CPU fallback: not a JPEG, corrupt, truncated, empty, CMYK, not an image."""
    good = (SAMPLES / "kitten.jpg").read_bytes()
    with Image.open(SAMPLES / "labrador.jpg") as labrador:
        return {
            "labrador.png": png(labrador.convert("RGB")),
            "corrupt.jpg": b"\xff\xd8\xff" + b"\x00" * 100,
            "truncated.jpg": good[: len(good) // 2],
            "empty.jpg": b"",
            "cmyk.jpg": jpeg(labrador.convert("CMYK")),
            "notes.txt": b"not an image\n",
        }


def post(client: Any, files: list[tuple[str, bytes]], query: str = "") -> Any:
    data = {"file": [(io.BytesIO(content), name) for name, content in files]}
    return client.post("/predict" + query, data=data, content_type="multipart/form-data")


# -- the batcher with a decoding stage ------------------------------------------------------------


def test_gathered_requests_share_one_decode_call_and_one_forward_pass(lite0) -> None:  # type: ignore[no-untyped-def]
    """Four requests, bad uploads among them: one decode call, one forward pass of the good images;
    every request gets its own rows (the CPU path's probabilities) and its own errors (the CPU path's)."""
    decoder = CountingDecoder(lite0)
    forwards: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        forwards.append(len(batch))
        return lite0.forward_uint8(batch)  # type: ignore[no-any-return]

    def decode_all(payloads: list[list[tuple[str, bytes]]]) -> Prepared:
        return decoder([item for uploads in payloads for item in uploads])

    odd = bad_and_odd_uploads()
    photo = {name: (SAMPLES / name).read_bytes() for name in ("kitten.jpg", "dog.jpg", "brittany.jpg", "bus.jpg")}
    requests = [
        [("kitten.jpg", photo["kitten.jpg"]), ("corrupt.jpg", odd["corrupt.jpg"])],
        [("labrador.png", odd["labrador.png"]), ("dog.jpg", photo["dog.jpg"]), ("empty.jpg", odd["empty.jpg"])],
        [("truncated.jpg", odd["truncated.jpg"])],  # every upload of this one fails
        [("brittany.jpg", photo["brittany.jpg"]), ("cmyk.jpg", odd["cmyk.jpg"]), ("bus.jpg", photo["bus.jpg"])],
    ]
    total = sum(len(r) for r in requests)
    batcher = DynamicBatcher(forward, prepare=decode_all, max_batch_size=total, max_delay_s=5.0)
    futures = [batcher.submit(r) for r in requests]  # gathered until max_batch_size images
    answers = [f.result(timeout=60) for f in futures]
    batcher.close()
    assert REDUCED == ["bus.jpg", "kitten.jpg"]
    assert decoder.calls == [total] and decoder.jpeg_calls == [2]  # dog.jpg and brittany.jpg, batched
    assert decoder.gpu.fallbacks[REDUCED_FALLBACK] == 2  # kitten.jpg and bus.jpg: the CPU's reduced scale
    assert forwards == [6]  # the four JPEGs, the PNG and the CMYK JPEG (CPU fallbacks)
    for request, answer in zip(requests, answers, strict=True):
        cpu = [lite0.decoder.try_decode(data) for _, data in request]
        assert answer.errors == {i: error for i, (tensor, error) in enumerate(cpu) if tensor is None}
        good = [tensor for tensor, _ in cpu if tensor is not None]
        if not good:
            assert answer.probs is None
            continue
        assert answer.probs is not None
        expected = lite0.forward_uint8(torch.stack(good))
        assert answer.probs.shape == expected.shape
        assert torch.allclose(answer.probs, expected, atol=2e-3)
        assert torch.equal(answer.probs.argmax(dim=1), expected.argmax(dim=1))
    assert answers[0].errors == {1: "not an image, or a format Pillow cannot read"}
    assert answers[1].errors == {2: "empty file"} and answers[2].errors == {0: "truncated image file"}


def test_a_decode_stage_that_raises_fails_only_its_gathered_batch() -> None:
    calls: list[int] = []

    def flaky(payloads: list[list[int]]) -> Prepared:
        calls.append(len(payloads))
        if len(calls) == 1:
            raise RuntimeError("nvJPEG out of memory")
        return torch.tensor([[float(x)] for p in payloads for x in p]), {}

    batcher = DynamicBatcher(lambda batch: batch, prepare=flaky, max_batch_size=3, max_delay_s=5.0)
    first = [batcher.submit([1]), batcher.submit([2, 3])]  # gathered: three images
    later = batcher.submit([4, 5, 6])  # a full batch of its own
    for future in first:
        with pytest.raises(RuntimeError, match="nvJPEG out of memory"):
            future.result(timeout=10)
    answer = later.result(timeout=10)
    assert answer.probs is not None and answer.probs.flatten().tolist() == [4.0, 5.0, 6.0] and answer.errors == {}
    assert calls == [2, 1]
    batcher.close()


def test_a_stage_that_loses_rows_fails_its_batch_instead_of_misattributing_them() -> None:
    batcher: DynamicBatcher[list[int]] = DynamicBatcher(
        lambda batch: batch, prepare=lambda payloads: (torch.zeros(1, 1), {}), max_batch_size=8, max_delay_s=0.0
    )
    with pytest.raises(RuntimeError, match="gave 1 rows and 0 errors for 2 images"):
        batcher.submit([1, 2]).result(timeout=10)
    batcher.close()


# -- the app: which decoding, and the same answers ----------------------------------------------


def test_gpu_decoding_is_chosen_only_on_cuda_when_nvjpeg_works_and_it_is_allowed(lite0) -> None:  # type: ignore[no-untyped-def]
    probed: list[torch.device] = []

    def works(device: torch.device) -> bool:
        probed.append(device)
        return True

    def decode_mode(classifier: Classifier, **decoding: Any) -> str:
        chosen = UploadDecoding(decoder=CountingDecoder, **decoding)
        app = create_app(ServerConfig(), classifier=classifier, warm_up_async=False, upload_decoding=chosen)
        return app.extensions["imgclassify"].decode  # type: ignore[no-any-return]

    cuda = reports_cuda(lite0)
    assert decode_mode(lite0, nvjpeg_works=works, environ={}) == "cpu"
    assert probed == []  # never probed off CUDA
    assert decode_mode(cuda, nvjpeg_works=works, environ={}) == "gpu"
    assert decode_mode(cuda, nvjpeg_works=works, environ={"IMGCLASSIFY_GPU_DECODE": "0"}) == "cpu"
    assert decode_mode(cuda, nvjpeg_works=lambda device: False, environ={}) == "cpu"
    assert probed == [torch.device("cuda")]  # the environment's "0" is read before probing
    # the real probe (nvJPEG on the device) says no off CUDA, and the default reads the process's environment
    assert decode_mode(lite0) == "cpu"


def test_info_reports_where_uploads_are_decoded(lite0) -> None:  # type: ignore[no-untyped-def]
    cpu = create_app(ServerConfig(), classifier=lite0, warm_up_async=False).test_client()
    assert cpu.get("/info").get_json()["server"]["decode"] == "cpu"
    gpu = gpu_app(lite0, CountingDecoder).test_client()
    assert gpu.get("/info").get_json()["server"]["decode"] == "gpu"


def refusing(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """An "nvJPEG" that fails on everything: every upload goes to the CPU decoder."""
    raise RuntimeError("nvjpegDecodeBatched failed")


def split_probabilities(body: Any) -> tuple[Any, list[float]]:
    """``body`` with every probability replaced by None, and the probabilities in order."""
    found: list[float] = []

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            found.extend(v for k, v in value.items() if k == "probability")
            return {k: None if k == "probability" else strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(body), found


#: the GPU path's resize on the CPU path's pixels, 1 level apart in ~0.01% of values for the sample
#: photos (bicubic), moves probabilities by at most 1.6e-4 (measured over samples/*.jpg)
PROBABILITY_TOLERANCE = 5e-4


@pytest.mark.parametrize("nvjpeg", ["libjpeg", "refusing"])
def test_gpu_decoding_answers_the_same_json_as_cpu_decoding(lite0, nvjpeg: str) -> None:  # type: ignore[no-untyped-def]
    """Every sample photo alone and all together, bad uploads among them, one decode call per request.

    With every file sent to the CPU fallback ("refusing"), the JSON is identical: the server's
    plumbing changes nothing. With libjpeg for nvJPEG, the GPU path's resize arithmetic moves
    probabilities slightly; everything else (classes, names, errors, order, statuses) is identical.
    """
    # both with CUDA's batch size: a request then goes in the same forward passes on both paths
    # (passes of other sizes could move the last printed decimal)
    cpu = create_app(ServerConfig(max_batch_size=64), classifier=lite0, warm_up_async=False).test_client()
    decoders: list[CountingDecoder] = []

    def counting(classifier: Classifier) -> CountingDecoder:
        decoders.append(CountingDecoder(classifier))
        if nvjpeg == "refusing":
            decoders[-1].gpu.decode_jpeg = refusing
        return decoders[-1]

    gpu = gpu_app(lite0, counting).test_client()
    decoder = decoders[0]
    assert decoder.calls == [1]  # the warm-up's small JPEG

    def same(files: list[tuple[str, bytes]], query: str = "") -> None:
        ours, theirs = post(gpu, files, query), post(cpu, files, query)
        assert ours.status_code == theirs.status_code
        if nvjpeg == "refusing":
            assert ours.get_json() == theirs.get_json()
            return
        ours_body, ours_p = split_probabilities(ours.get_json())
        theirs_body, theirs_p = split_probabilities(theirs.get_json())
        assert ours_body == theirs_body
        assert ours_p == pytest.approx(theirs_p, abs=PROBABILITY_TOLERANCE)

    photos = [(name, (SAMPLES / name).read_bytes()) for name in PHOTOS]
    for photo in photos:
        same([photo])
        same([photo], "?top_k=5")
    mixed = photos[:3] + list(bad_and_odd_uploads().items()) + photos[3:]
    same(mixed, "?top_k=3")
    assert len([p for p in post(gpu, mixed).get_json()["predictions"] if "error" in p]) == 4
    for name, data in bad_and_odd_uploads().items():  # one bad upload alone: the same 422 (or 200)
        same([(name, data)])
    assert decoder.calls == [1] + [1] * 2 * len(photos) + [len(mixed)] * 2 + [1] * len(bad_and_odd_uploads())
    given = len(photos) - len(REDUCED)  # the JPEGs nvJPEG is given: under twice the resize size
    assert decoder.gpu.fallbacks[REDUCED_FALLBACK] == 4 * len(REDUCED)  # alone twice, in the mixed requests twice
    if nvjpeg == "refusing":  # every other JPEG really went through the GPU path's fallback
        assert decoder.gpu.fallbacks["nvJPEG failed"] >= 1 + 2 * given
    else:  # and here through the batched "nvJPEG" call
        assert "nvJPEG failed" not in decoder.gpu.fallbacks and len(decoder.jpeg_calls) >= 1 + 2 * given


def test_concurrent_requests_are_decoded_in_one_call_and_answered_as_alone(lite0) -> None:  # type: ignore[no-untyped-def]
    decoders: list[CountingDecoder] = []

    def counting(classifier: Classifier) -> CountingDecoder:
        decoders.append(CountingDecoder(classifier))
        return decoders[-1]

    names = ["kitten.jpg", "dog.jpg", "labrador.jpg", "brittany.jpg"]
    uploads = [[(n, (SAMPLES / n).read_bytes())] for n in names]
    uploads.append([("notes.txt", b"not an image"), ("bus.jpg", (SAMPLES / "bus.jpg").read_bytes())])
    size = sum(len(u) for u in uploads)
    app = gpu_app(lite0, counting, max_batch_size=size, max_batch_delay_ms=5000)
    state = app.extensions["imgclassify"]
    sizes: list[int] = []
    state.batcher.on_batch = sizes.append
    decoder = decoders[0]
    decoder.calls.clear()
    cpu = create_app(ServerConfig(), classifier=lite0, warm_up_async=False).test_client()
    barrier = threading.Barrier(len(uploads))

    def call(files: list[tuple[str, bytes]]) -> Any:
        client = app.test_client()
        barrier.wait()
        return post(client, files, "?top_k=3")

    with ThreadPoolExecutor(len(uploads)) as pool:
        responses = list(pool.map(call, uploads))
    assert decoder.calls == [size] and sizes == [size - 1]  # one decode call, one forward pass
    for files, response in zip(uploads, responses, strict=True):
        alone = post(cpu, files, "?top_k=3")
        assert response.status_code == alone.status_code == 200
        ours, theirs = response.get_json(), alone.get_json()
        for got, want in zip(ours.get("predictions", [ours]), theirs.get("predictions", [theirs]), strict=True):
            assert got.keys() == want.keys() and got["filename"] == want["filename"]
            if "error" in want:
                assert got == want
                continue
            assert [c["class_id"] for c in got["top_k"]] == [c["class_id"] for c in want["top_k"]]
            for a, b in zip(got["top_k"], want["top_k"], strict=True):
                assert a["probability"] == pytest.approx(b["probability"], abs=PROBABILITY_TOLERANCE)


def test_a_failing_decode_stage_answers_500_json_and_the_server_keeps_going(lite0) -> None:  # type: ignore[no-untyped-def]
    class FailsOnce(CountingDecoder):
        def __call__(self, items: Sequence[tuple[str, bytes | None]]) -> Prepared:
            if len(self.calls) == 1:  # after the warm-up
                self.calls.append(len(items))
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().__call__(items)

    client = gpu_app(lite0, FailsOnce).test_client()
    kitten = [("kitten.jpg", (SAMPLES / "kitten.jpg").read_bytes())]
    failed = post(client, kitten)
    assert failed.status_code == 500 and failed.is_json
    assert failed.get_json() == {
        "error": "internal_error", "message": "the server failed to handle this request; see its log"
    }  # fmt: skip
    again = post(client, kitten)
    assert again.status_code == 200 and again.get_json()["class_id"] == 282


def test_an_empty_upload_never_reads_a_server_file_of_its_name(
    lite0: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU decoder's CPU fallback reads a path only for a file it could not read, never for
    an upload's name: an empty upload named like a photo in the server's folder is "empty file"."""
    (tmp_path / "kitten.jpg").write_bytes((SAMPLES / "kitten.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    response = post(gpu_app(lite0, CountingDecoder).test_client(), [("kitten.jpg", b"")])
    assert response.status_code == 422
    assert response.get_json() == {"filename": "kitten.jpg", "error": "invalid_image", "message": "empty file"}
