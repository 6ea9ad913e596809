"""`imgclassify serve`: every route, field and error through Flask's test client; a real server
subprocess answering the tutorial's curl command; a bounded concurrent load test."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SAMPLES, free_port, wait_until_ready
from imgclassify.server.app import ROOT_MESSAGE, ServerConfig, create_app

EXPECTED = {"kitten.jpg": 282, "labrador.jpg": 208, "brittany.jpg": 215, "dog.jpg": 222}


@pytest.fixture(scope="module")
def app(lite0):  # type: ignore[no-untyped-def]
    application = create_app(
        ServerConfig(max_upload_mb=1.0, max_batch_delay_ms=2), classifier=lite0, warm_up_async=False
    )
    application.testing = True
    return application


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def upload(*names: str) -> dict[str, object]:
    return {"file": [(io.BytesIO((SAMPLES / n).read_bytes()), n) for n in names]}


def test_root_is_the_tutorial_message(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/")
    assert response.status_code == 200 and response.get_json() == ROOT_MESSAGE


def test_predict_one_file(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/predict", data=upload("kitten.jpg"), content_type="multipart/form-data")
    assert response.status_code == 200
    body = response.get_json()
    assert body["class_id"] == 282 and body["class_name"] == "tiger_cat" and body["wnid"] == "n02123159"
    assert body["model"] == "efficientnet_lite0" and body["filename"] == "kitten.jpg"
    assert body["probability"] == pytest.approx(0.5938, abs=0.01)  # 720x720: decoded at reduced scale (0.5585 exact)
    assert "top_k" not in body


def test_predict_top_k_matches_cli_records(client, lite0) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/predict?top_k=5", data=upload("labrador.jpg"), content_type="multipart/form-data").get_json()
    record = lite0.predict_file(SAMPLES / "labrador.jpg", top_k=5).to_dict()
    assert body["top_k"] == record["top_k"]
    assert body["class_id"] == record["class_id"] == 208 and body["probability"] == record["probability"]


def test_several_files_in_order_each_with_its_own_error(client) -> None:  # type: ignore[no-untyped-def]
    data = upload("brittany.jpg", "kitten.jpg")
    data["file"].insert(1, (io.BytesIO(b"not an image"), "notes.txt"))  # type: ignore[attr-defined]
    response = client.post("/predict", data=data, content_type="multipart/form-data")
    assert response.status_code == 200
    preds = response.get_json()["predictions"]
    assert [p["filename"] for p in preds] == ["brittany.jpg", "notes.txt", "kitten.jpg"]
    assert preds[0]["class_id"] == 215 and preds[2]["class_id"] == 282
    assert preds[1]["error"] == "invalid_image" and "class_id" not in preds[1]


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"data": {}}, 400, "missing_file"),
        ({"data": {"other": (io.BytesIO(b"x"), "a.jpg")}}, 400, "missing_file"),
        ({"data": {"file": (io.BytesIO(b"\x89PNG\r\n\x1a\n broken"), "bad.png")}}, 422, "invalid_image"),
        ({"data": {"file": (io.BytesIO(b""), "empty.jpg")}}, 422, "invalid_image"),
        ({"data": {"file": (io.BytesIO(os.urandom(2 * 1024 * 1024)), "big.jpg")}}, 413, "request_entity_too_large"),
    ],
)
def test_predict_errors_are_json(client, kwargs, status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/predict", content_type="multipart/form-data", **kwargs)
    assert response.status_code == status
    assert response.is_json and response.get_json()["error"] == error
    assert "Traceback" not in response.get_data(as_text=True) and "<html" not in response.get_data(as_text=True).lower()


@pytest.mark.parametrize("top_k", ["0", "abc", "1001"])
def test_bad_top_k(client, top_k: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post(f"/predict?top_k={top_k}", data=upload("kitten.jpg"), content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["error"] == "bad_top_k"


def test_wrong_method_and_unknown_path(client) -> None:  # type: ignore[no-untyped-def]
    assert (
        client.get("/predict").status_code == 405 and client.get("/predict").get_json()["error"] == "method_not_allowed"
    )
    assert client.delete("/").status_code == 405
    assert client.get("/nope").status_code == 404 and client.get("/nope").get_json()["error"] == "not_found"


def test_error_messages_do_not_echo_server_paths(client) -> None:  # type: ignore[no-untyped-def]
    body = client.post(
        "/predict", data={"file": (io.BytesIO(b"junk"), "../../etc/passwd")}, content_type="multipart/form-data"
    )
    text = body.get_data(as_text=True)
    assert body.get_json()["filename"] == "passwd" and "/etc" not in text and os.getcwd() not in text


def test_health_ready_metrics(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    client.post("/predict", data=upload("dog.jpg"), content_type="multipart/form-data")
    client.post("/predict", data={"file": (io.BytesIO(b"junk"), "x.jpg")}, content_type="multipart/form-data")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    text = metrics.get_data(as_text=True)
    assert 'imgclassify_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'imgclassify_http_requests_total{method="POST",route="/predict",status="422"}' in text
    assert (
        'imgclassify_images_total{outcome="classified"}' in text
        and 'imgclassify_images_total{outcome="failed"}' in text
    )
    assert "imgclassify_http_request_duration_seconds_bucket" in text and "imgclassify_ready 1.0" in text


def test_readyz_is_503_until_warmed_up(lite0, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    original = type(lite0).warm_up

    def slow_warm_up(self, batch_size: int = 1) -> None:  # type: ignore[no-untyped-def]
        gate.wait(10)
        original(self, batch_size)

    monkeypatch.setattr(type(lite0), "warm_up", slow_warm_up)
    client = create_app(ServerConfig(), classifier=lite0).test_client()
    assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200
    gate.set()
    for _ in range(100):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.05)
    assert client.get("/readyz").status_code == 200


def test_dynamic_batching_stacks_concurrent_requests_and_matches_single_path(lite0) -> None:  # type: ignore[no-untyped-def]
    app = create_app(ServerConfig(max_batch_size=8, max_batch_delay_ms=200), classifier=lite0, warm_up_async=False)
    state = app.extensions["imgclassify"]
    sizes: list[int] = []
    state.batcher.on_batch = sizes.append
    names = list(EXPECTED) * 2
    barrier = threading.Barrier(len(names))

    def call(name: str) -> dict[str, object]:
        client = app.test_client()
        barrier.wait()
        return client.post("/predict?top_k=3", data=upload(name), content_type="multipart/form-data").get_json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(len(names)) as pool:
        bodies = list(pool.map(call, names))
    assert max(sizes) > 1, sizes  # requests really shared forward passes
    for name, body in zip(names, bodies, strict=True):
        single = lite0.predict_file(SAMPLES / name, top_k=3)
        assert body["class_id"] == EXPECTED[name] == single.class_id
        for got, want in zip(body["top_k"], single.top, strict=True):  # type: ignore[call-overload]
            assert got["class_id"] == want.class_id
            assert got["probability"] == pytest.approx(want.probability, abs=1e-4)


def test_uploads_never_touch_the_disk(lite0, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """An upload well over werkzeug's 500 KB spooling threshold is parsed in memory.

    werkzeug bound ``SpooledTemporaryFile`` when it was imported (``werkzeug.formparser``), so
    that name is patched where it is used, as well as tempfile's own functions.
    """
    import tempfile

    import werkzeug.formparser

    spooled: list[str] = []

    def refuse(name: str) -> object:
        def call(*args: object, **kwargs: object) -> None:
            spooled.append(name)
            raise AssertionError(f"upload written to a temporary file ({name})")

        return call

    for module, name in [(werkzeug.formparser, "SpooledTemporaryFile"), (tempfile, "SpooledTemporaryFile"),
                         (tempfile, "TemporaryFile"), (tempfile, "NamedTemporaryFile"), (tempfile, "mkstemp")]:  # fmt: skip
        if hasattr(module, name):
            monkeypatch.setattr(module, name, refuse(name))
    from PIL import Image

    big = io.BytesIO()
    with Image.open(SAMPLES / "three_dogs.jpg") as image:
        image.convert("RGB").resize((2400, 1800)).save(big, "JPEG", quality=98)
    assert big.tell() > 1_000_000  # twice werkzeug's in-memory threshold
    app = create_app(ServerConfig(max_upload_mb=8), classifier=lite0, warm_up_async=False)
    data = {"file": (io.BytesIO(big.getvalue()), "three_dogs_big.jpg")}
    response = app.test_client().post("/predict", data=data, content_type="multipart/form-data")
    assert spooled == [] and response.status_code == 200, response.get_json()


def test_missing_flask_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from imgclassify.cli import app as cli_app

    monkeypatch.setitem(sys.modules, "flask", None)
    result = CliRunner().invoke(cli_app, ["serve", "-m", "efficientnet_lite0"])
    assert result.exit_code == 2
    # a plain `pipx install` over an existing install does nothing: the hint says inject; and pip, both ways
    assert "pipx inject imgclassify flask uvicorn gunicorn prometheus-client" in result.stderr
    assert "pip install 'imgclassify[serve]'" in result.stderr and "pip install '.[serve]'" in result.stderr


def test_config_from_environment() -> None:
    env = {"IMGCLASSIFY_MODEL": "resnet50", "IMGCLASSIFY_TOP_K": "3", "IMGCLASSIFY_MAX_UPLOAD_MB": "2.5"}
    config = ServerConfig.from_env(env)
    model = config.options
    assert (model.model, config.top_k, config.max_upload_mb, model.device) == ("resnet50", 3, 2.5, "auto")


# -- a real server process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    port = free_port()
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp_path_factory.mktemp("th"))}
    log = tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [exe, "serve", "--port", str(port), "--threads", "8", "--max-batch-delay-ms", "5"],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert '"POST /predict" 200' in log.read_text()  # one log line per request on stderr


@pytest.mark.slow
def test_tutorial_curl_command(live_server: str) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test"
    out = subprocess.run(
        [curl, "-s", "-X", "POST", "-H", "Content-Type: multipart/form-data", f"{live_server}/predict", "-F", "file=@kitten.jpg"],
        cwd=SAMPLES, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    body = json.loads(out.stdout)
    assert 281 <= body["class_id"] <= 285 and body["class_name"] == "tiger_cat"
    with urllib.request.urlopen(live_server + "/") as r:
        assert json.loads(r.read()) == ROOT_MESSAGE


def _post(url: str, name: str) -> tuple[int, dict[str, object]]:
    boundary = "imgclassifyboundary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + (SAMPLES / name).read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=payload, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow
def test_concurrent_load_nothing_lost_or_mixed_up(live_server: str) -> None:
    clients, per_client = 8, 25
    names = list(EXPECTED)

    def client(i: int) -> list[tuple[str, int, dict[str, object]]]:
        results = []
        for j in range(per_client):
            name = names[(i + j) % len(names)]
            status, body = _post(live_server + "/predict", name)
            results.append((name, status, body))
        return results

    with ThreadPoolExecutor(clients) as pool:
        answers = [a for batch in pool.map(client, range(clients)) for a in batch]
    assert len(answers) == clients * per_client
    for name, status, body in answers:
        assert status == 200 and body["filename"] == name and body["class_id"] == EXPECTED[name], (name, body)
    with urllib.request.urlopen(live_server + "/metrics") as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith('imgclassify_images_total{outcome="classified"}'))
    assert float(line.split()[-1]) >= clients * per_client


BROWSER_ACCEPT = (  # Chromium 150's, for a page
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)


def test_root_gives_browsers_the_page_and_clients_the_json(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert 'id="files"' in text and "predict?top_k=5" in text
    assert "http://" not in text.replace("http-equiv", "") and "https://" not in text  # nothing from a CDN
    for accept in ("*/*", "application/json", "application/json, text/html;q=0.5"):
        answer = client.get("/", headers={"Accept": accept})
        assert answer.get_json() == ROOT_MESSAGE and answer.headers["Vary"] == "Accept", accept


@pytest.mark.slow
def test_page_in_chromium_classifies_an_upload(live_server: str, tmp_path: Path) -> None:
    from test_report import CHROMIUM, Chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (the test extra has it)")
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        browser.send("DOM.enable")
        browser.send("Page.navigate", url=live_server + "/")
        deadline = time.monotonic() + 30
        while browser.js("document.readyState") != "complete" or browser.js("document.title") != "imgclassify":
            assert time.monotonic() < deadline, browser.js("document.documentElement.outerHTML")[:300]
            time.sleep(0.1)
        node = browser.send(
            "DOM.querySelector", nodeId=browser.send("DOM.getDocument")["root"]["nodeId"], selector="#files"
        )
        browser.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(SAMPLES / "labrador.jpg")])
        deadline = time.monotonic() + 60
        while (
            browser.js("document.querySelector('.result') && document.querySelector('.result').dataset.state") != "done"
        ):
            assert time.monotonic() < deadline, "no answer in the page"
            time.sleep(0.2)
        rows = browser.js(
            "Array.from(document.querySelectorAll('.result .row')).map(r => [Number(r.dataset.classId),"
            " r.querySelector('.cls').textContent, r.querySelector('.bar span').style.width])"
        )
        assert len(rows) == 5 and rows[0][:2] == [208, "Labrador_retriever (208)"]
        assert float(rows[0][2].rstrip("%")) > 90  # the bar: 92.7%
        assert browser.js("document.getElementById('model-name').textContent") == "efficientnet_lite0"
        assert browser.errors() == []
        shot = browser.send("Page.captureScreenshot", format="png")["data"]
        import base64

        (tmp_path / "serve_page.png").write_bytes(base64.b64decode(shot))
        if os.environ.get("IMGCLASSIFY_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "serve_page.png", os.environ["IMGCLASSIFY_SCREENSHOT_DIR"])
    finally:
        browser.close()


def test_option_errors_name_the_option_as_each_caller_spells_it(client, lite0) -> None:  # type: ignore[no-untyped-def]
    """One library error; the CLI says --top-k, the server top_k (its query parameter)."""
    from imgclassify.errors import UsageError

    with pytest.raises(UsageError) as caught:
        lite0.check_top_k(0)
    assert str(caught.value) == "--top-k must be between 1 and 1000 (the model's class count), got 0"
    response = client.post("/predict?top_k=2000", data=upload("kitten.jpg"), content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json() == {
        "error": "bad_top_k",
        "message": "top_k must be between 1 and 1000 (the model's class count), got 2000",
    }
    response = client.post("/predict?threshold=1.5", data=upload("kitten.jpg"), content_type="multipart/form-data")
    assert response.get_json()["message"] == "threshold must be a probability from 0 to 1 (such as 0.5), got 1.5"
