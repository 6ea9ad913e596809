"""The server's bounds: forward passes never larger than the batch size, whatever a request holds;
files per request (413 while the body arrives); the queue of waiting images (503 + Retry-After);
and the peak memory of a real server answering one request of 1,500 files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import SAMPLES, free_port, multipart_body, wait_until_ready
from imgclassify.server.app import ServerConfig, create_app
from imgclassify.server.batching import DynamicBatcher

#: the bound docs/serve.md states: a request of 1,500 small files adds at most this much to the
#: server's resident memory (EfficientNet-Lite0 on the CPU, batch 8; measured: about +240 MB)
PEAK_RSS_BOUND_MB = 400


def small_png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- the batcher: no pass larger than max_batch_size ---------------------------------------------


def test_a_big_payload_goes_in_passes_of_the_batch_size_and_joins_back() -> None:
    import torch

    sizes: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(batch))
        return batch[:, :1, 0, 0].float()  # each row's first pixel: which image it was

    batcher = DynamicBatcher(forward, max_batch_size=8, max_delay_s=0.0)
    try:
        payload = torch.arange(21, dtype=torch.uint8).view(21, 1, 1, 1).expand(21, 3, 2, 2).contiguous()
        answer = batcher.submit(payload).result(timeout=30)
    finally:
        batcher.close()
    assert max(sizes) <= 8 and sum(sizes) == 21
    assert answer.probs is not None and answer.probs[:, 0].tolist() == [float(i) for i in range(21)]


def test_joined_errors_keep_their_positions() -> None:
    import torch

    from imgclassify.server.batching import Prepared

    def prepare(payloads: list[list[int]]) -> Prepared:  # odd numbers fail
        flat = [v for p in payloads for v in p]
        good = [v for v in flat if v % 2 == 0]
        rows = torch.tensor(good, dtype=torch.uint8).view(-1, 1, 1, 1) if good else None
        return rows, {i: f"odd {v}" for i, v in enumerate(flat) if v % 2}

    batcher: DynamicBatcher[list[int]] = DynamicBatcher(
        lambda b: b[:, :, 0, 0].float(), prepare=prepare, max_batch_size=4, max_delay_s=0.0
    )
    try:
        answer = batcher.submit(list(range(10))).result(timeout=30)
    finally:
        batcher.close()
    assert answer.errors == {i: f"odd {i}" for i in range(1, 10, 2)}
    assert answer.probs is not None and answer.probs[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_a_request_of_many_files_is_classified_in_batch_size_passes(lite0, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    app = create_app(ServerConfig(max_batch_size=4, max_batch_delay_ms=1), classifier=lite0, warm_up_async=False)
    state = app.extensions["imgclassify"]
    sizes: list[int] = []
    forward = state.batcher.forward

    def counted(batch: Any) -> Any:
        sizes.append(len(batch))
        return forward(batch)

    monkeypatch.setattr(state.batcher, "forward", counted)
    names = ["kitten.jpg", "labrador.jpg", "brittany.jpg", "dog.jpg"] * 5 + ["notes.txt"]
    files = [(io.BytesIO((SAMPLES / n).read_bytes()) if n != "notes.txt" else io.BytesIO(b"x"), n) for n in names]
    response = app.test_client().post("/predict", data={"file": files}, content_type="multipart/form-data")
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert [p.get("class_id") for p in predictions] == [282, 208, 215, 222] * 5 + [None]
    assert predictions[-1]["error"] == "invalid_image"
    assert sizes and max(sizes) <= 4 and sum(sizes) == 20


def test_predict_images_goes_in_batches(lite0, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sizes: list[int] = []
    forward = lite0.forward_uint8

    def counted(batch: Any) -> Any:
        sizes.append(len(batch))
        return forward(batch)

    monkeypatch.setattr(lite0, "forward_uint8", counted)
    images = [Image.open(SAMPLES / n).convert("RGB") for n in ["kitten.jpg", "labrador.jpg", "dog.jpg"] * 7]
    predictions = lite0.predict_images(images, batch_size=4)
    assert [p.top[0].class_id for p in predictions] == [282, 208, 222] * 7
    assert max(sizes) == 4 and sum(sizes) == 21
    sizes.clear()
    lite0.predict_images(images)  # the device's default batch size: 8 on the CPU
    assert max(sizes) == 8 and sum(sizes) == 21


# -- files per request ------------------------------------------------------------------------------


def test_more_files_than_max_files_is_413_json(lite0) -> None:  # type: ignore[no-untyped-def]
    app = create_app(ServerConfig(max_files=3), classifier=lite0, warm_up_async=False)
    files = [(io.BytesIO(small_png(i)), f"{i}.png") for i in range(4)]
    response = app.test_client().post("/predict", data={"file": files}, content_type="multipart/form-data")
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_many_files" and "more than 3 files" in response.get_json()["message"]
    three = [(io.BytesIO(small_png(i)), f"{i}.png") for i in range(3)]
    ok = app.test_client().post("/predict", data={"file": three}, content_type="multipart/form-data")
    assert ok.status_code == 200 and len(ok.get_json()["predictions"]) == 3


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_part_counter_counts_parts_across_any_chunking(chunk: int) -> None:
    from imgclassify.server.asgi import _PartCounter

    body, boundary = multipart_body([(f"{i}.png", small_png(i)) for i in range(12)])
    counter = _PartCounter.for_headers([(b"content-type", f"multipart/form-data; boundary={boundary}".encode())])
    assert counter is not None
    seen = [counter.feed(body[i : i + chunk]) for i in range(0, len(body), chunk)]
    assert seen[-1] == 12 and seen == sorted(seen)
    assert _PartCounter.for_headers([(b"content-type", b"application/json")]) is None


# -- the queue --------------------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_at_once(lite0, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    app = create_app(ServerConfig(max_batch_size=2, max_queue=2), classifier=lite0, warm_up_async=False)
    state = app.extensions["imgclassify"]
    release = threading.Event()
    forward = state.batcher.forward

    def slow(batch: Any) -> Any:
        release.wait(30)
        return forward(batch)

    monkeypatch.setattr(state.batcher, "forward", slow)

    def post(n: int) -> tuple[int, dict[str, Any], dict[str, str], float]:
        files = [(io.BytesIO((SAMPLES / "kitten.jpg").read_bytes()), "kitten.jpg") for _ in range(n)]
        start = time.perf_counter()
        r = app.test_client().post("/predict", data={"file": files}, content_type="multipart/form-data")
        return r.status_code, r.get_json(), dict(r.headers), time.perf_counter() - start

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, 2)  # fills the queue (2 images), waits on the slow model
        deadline = time.monotonic() + 30
        while state._queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, body, headers, elapsed = post(1)
        assert status == 503 and body["error"] == "overloaded" and headers["Retry-After"] == "1"
        assert elapsed < 5  # at once, not after the queue drained
        release.set()
        assert first.result(timeout=60)[0] == 200
    assert post(1)[0] == 200  # room again
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'imgclassify_rejected_requests_total{reason="overloaded"} 1.0' in metrics
    assert "imgclassify_queued_images 0.0" in metrics


# -- a real server: 1,500 files, peak memory --------------------------------------------------------


def _vm_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status (VmHWM)")
def test_1500_small_files_in_one_request_keep_the_server_within_its_bound(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "imgclassify", "serve", "-m", "efficientnet_lite0", "-d", "cpu",
               "--host", "127.0.0.1", "--port", str(port), "--max-files", "2000", "--max-batch-size", "8"]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log)
        warm, boundary = multipart_body([("warm.png", small_png(1))])
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        urllib.request.urlopen(urllib.request.Request(base + "/predict", data=warm, headers=headers), timeout=120)
        before = _vm_mb(proc.pid, "VmHWM")
        body, boundary = multipart_body([(f"{i}.png", small_png(i)) for i in range(1500)])
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        request = urllib.request.Request(base + "/predict", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                status, answer = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, json.loads(exc.read())
        peak = _vm_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(
        f"peak RSS {before:.0f} MB before the request, {peak:.0f} MB after ({peak - before:+.0f} MB); status {status}"
    )
    assert peak - before < PEAK_RSS_BOUND_MB, (before, peak)
    # answered in full, or (a slow machine past the request timeout) refused with JSON
    assert (status == 200 and len(answer["predictions"]) == 1500) or "error" in answer, (status, answer)


@pytest.mark.slow
def test_the_default_max_files_refuses_1500_while_reading(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "imgclassify", "serve", "-m", "efficientnet_lite0", "-d", "cpu", "--host",
               "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log)
        body, boundary = multipart_body([(f"{i}.png", small_png(i)) for i in range(1500)])
        request = urllib.request.Request(
            base + "/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=120)
        answer = json.loads(caught.value.read())
        assert caught.value.code == 413 and answer["error"] == "too_many_files"
        assert "more than 500 files" in answer["message"]
        metrics = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        assert 'imgclassify_http_requests_total{method="POST",route="/predict",status="413"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_the_front_refuses_before_a_request_waits_for_a_thread() -> None:
    """Behind `imgclassify serve`, admission happens in the event loop, counted by multipart parts,
    so requests never pile up unbounded in front of the request threads; the app then skips its own."""
    import asyncio

    from imgclassify.server.app import ADMITTED_KEY
    from imgclassify.server.asgi import BufferedWSGI

    class Queue:
        def __init__(self) -> None:
            self.queued, self.seen = 0, []  # type: ignore[var-annotated]

        def admit(self, images: int) -> bool:
            self.seen.append(images)
            if self.queued and self.queued + images > 3:
                return False
            self.queued += images
            return True

        def release(self, images: int) -> None:
            self.queued -= images

        def overloaded_message(self) -> str:
            return "busy"

    admitted: list[object] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        admitted.append(environ.get(ADMITTED_KEY))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    queue = Queue()
    front = BufferedWSGI(app, max_body=10**7, read_timeout_s=5, max_files=10, admission=queue)
    body, boundary = multipart_body([(f"{i}.png", small_png(i)) for i in range(2)])

    async def request(path: str = "/predict") -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": [
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await front(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    assert asyncio.run(request())[0] == 200 and admitted == [2] and queue.seen == [2] and queue.queued == 0
    queue.queued = 2  # another request's images are waiting
    status, headers, answer = asyncio.run(request())
    assert status == 503 and headers[b"retry-after"] == b"1" and json.loads(answer)["error"] == "overloaded"
    assert admitted == [2] and queue.queued == 2  # the app never saw it, nothing leaked
    assert asyncio.run(request("/other"))[0] == 200 and admitted[-1] is None  # only predictions are counted
    front.executor.shutdown()


def test_the_gpu_path_goes_in_batch_size_passes_too(lite0) -> None:  # type: ignore[no-untyped-def]
    """With GPU decoding (the batcher decodes), a request's uploads are decoded and classified in
    passes of at most the batch size as well (here on the CPU, libjpeg standing in for nvJPEG)."""
    from test_server_gpu_decode import CountingDecoder, gpu_app

    decoders: list[CountingDecoder] = []

    def counting(classifier: Any) -> CountingDecoder:
        decoders.append(CountingDecoder(classifier))
        return decoders[-1]

    client = gpu_app(lite0, counting, max_batch_size=4, max_batch_delay_ms=1).test_client()
    names = ["kitten.jpg", "labrador.jpg", "brittany.jpg", "dog.jpg"] * 5 + ["notes.txt"]
    files = [(io.BytesIO((SAMPLES / n).read_bytes()) if n != "notes.txt" else io.BytesIO(b"x"), n) for n in names]
    response = client.post("/predict", data={"file": files}, content_type="multipart/form-data")
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert [p.get("class_id") for p in predictions] == [282, 208, 215, 222] * 5 + [None]
    calls = decoders[0].calls[1:]  # after the warm-up's
    assert max(calls) <= 4 and sum(calls) == 21
