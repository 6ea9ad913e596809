"""`imgclassify serve --api-key-file` / ``IMGCLASSIFY_API_KEY``: the auth matrix through Flask's test
client, the key never shown, the key file's errors, the configuration to the workers and back, the
warning for a server open to the network; then real servers: the 401 before the body, the file
through ``--workers 2``, and the page asking for the key in a browser."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLES, free_port, multipart_body, wait_until_ready
from imgclassify.cli import app as cli_app
from imgclassify.errors import UsageError
from imgclassify.server.app import (
    ROOT_MESSAGE,
    ServerConfig,
    check_authorization,
    create_app,
    is_loopback_host,
    read_api_key_file,
    resolve_api_key,
)
from imgclassify.server.asgi import config_to_env

KEY = "k3y-Zq9vT2-not-in-any-answer"  # distinctive: searched for in every answer, log and repr
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ROUTES = [("POST", "/predict"), ("GET", "/info"), ("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/")]  # fmt: skip
PROTECTED = {"/predict", "/info", "/metrics"}
CASES = {  # the Authorization header each case sends
    "no key configured": None,
    "no header": None,
    "wrong key": "Bearer not-the-key",
    "wrong scheme": f"Token {KEY}",  # the right key, but not as a Bearer token
    "right key": f"Bearer {KEY}",
}


def expected(path: str, case: str) -> tuple[int, str | None]:
    """The status and ``WWW-Authenticate`` header that route x case must answer."""
    if path not in PROTECTED or case in ("no key configured", "right key"):
        return 200, None
    return 401, 'Bearer error="invalid_token"' if case == "wrong key" else "Bearer"


@pytest.fixture(scope="module")
def apps(lite0):  # type: ignore[no-untyped-def]
    """Two small real apps on the bundled model: without a key, and with KEY."""
    made = {}
    for name, key in (("open", None), ("keyed", KEY)):
        application = create_app(ServerConfig(max_batch_delay_ms=2, api_key=key), classifier=lite0, warm_up_async=False)
        application.testing = True
        made[name] = application
    return made


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the imgclassify loggers (``configure_logging`` stops them at "imgclassify")."""
    logger = logging.getLogger("imgclassify")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="imgclassify")
    caplog.set_level(logging.DEBUG, logger="imgclassify.server")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def call(client: Any, method: str, path: str, authorization: str | None) -> Any:
    headers = {"Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    if method == "POST":
        data = {"file": (io.BytesIO((SAMPLES / "kitten.jpg").read_bytes()), "kitten.jpg")}
        return client.post(path, data=data, content_type="multipart/form-data", headers=headers)
    return client.get(path, headers=headers)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[p for _, p in ROUTES])
def test_auth_matrix(apps, method: str, path: str, case: str) -> None:  # type: ignore[no-untyped-def]
    client = apps["open" if case == "no key configured" else "keyed"].test_client()
    response = call(client, method, path, CASES[case])
    status, challenge = expected(path, case)
    assert (response.status_code, response.headers.get("WWW-Authenticate")) == (status, challenge)
    if status == 401:
        body = response.get_json()
        assert set(body) == {"error", "message"} and body["error"] == "unauthorized"
        assert "Authorization: Bearer <key>" in body["message"]
    elif path == "/predict":
        assert response.get_json()["class_name"] == "tiger_cat"
    elif path == "/":
        assert response.get_json() == ROOT_MESSAGE


def test_page_is_open_and_unknown_paths_need_the_key(apps) -> None:  # type: ignore[no-untyped-def]
    client = apps["keyed"].test_client()
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.mimetype == "text/html" and KEY not in page.get_data(as_text=True)
    assert client.get("/nope").status_code == 401  # nothing beyond the open routes is open, not even a 404
    assert client.get("/nope", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    assert call(client, "POST", "/predict", f"bearer  {KEY} ").status_code == 200  # scheme in any case


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("Bearer", "invalid_token"),
        ("Bearer ", "invalid_token"),
        (f"Basic {base64.b64encode(f'user:{KEY}'.encode()).decode()}", "wrong_scheme"),
        (f"Token {KEY}", "wrong_scheme"),
        (f"Bearer {KEY[:-1]}", "invalid_token"),
        (f"Bearer {KEY}x", "invalid_token"),
        (f"Bearer {KEY},Bearer {KEY}", "invalid_token"),  # two headers, joined as WSGI joins them
        ("Bearer k\u0113y", "invalid_token"),  # not latin-1: not bytes off the wire
        (f"Bearer {KEY}", None),
        (f"BEARER\t{KEY}", None),
    ],
)
def test_check_authorization(header: str | None, reason: str | None) -> None:
    assert check_authorization(header, KEY.encode()) == reason
    assert check_authorization(header, None) is None  # no key: everyone


def test_utf8_key_matches_its_raw_bytes() -> None:
    key = "clé-ü"
    wire = key.encode("utf-8").decode("latin-1")  # how WSGI and the ASGI layer hand over the header's bytes
    assert check_authorization(f"Bearer {wire}", key.encode("utf-8")) is None
    assert check_authorization(f"Bearer {key}", key.encode("utf-8")) == "invalid_token"


def test_key_never_shown(apps, logs: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    client = apps["keyed"].test_client()
    shown = []
    for method, path in ROUTES:
        for case in ("no header", "wrong key", "wrong scheme", "right key"):
            response = call(client, method, path, CASES[case])
            shown.append(response.get_data(as_text=True))
            shown.extend(f"{name}: {value}" for name, value in response.headers.items())
    info = call(client, "GET", "/info", CASES["right key"]).get_json()
    metrics = call(client, "GET", "/metrics", CASES["right key"]).get_data(as_text=True)
    assert info["server"]["requires_api_key"] is True and KEY not in json.dumps(info)
    assert 'route="/predict",status="401"' in metrics and 'route="/info",status="401"' in metrics
    assert KEY not in metrics
    assert '"POST /predict" 401' in logs.text and '"POST /predict" 200' in logs.text  # the records were caught
    for text in [*shown, logs.text]:
        assert KEY not in text
    config = apps["keyed"].extensions["imgclassify"].config
    assert config.api_key == KEY and KEY not in repr(config) and KEY not in str(config)


# -- the key's sources ---------------------------------------------------------------------------


def test_key_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text(f"  {KEY}\n\n")
    assert read_api_key_file(path) == KEY
    config = ServerConfig(api_key_file=str(path))  # a file alone: read when the config is made
    assert config.api_key == KEY and KEY not in repr(config) and str(path) in repr(config)


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty"), (b" \n\t\n", "is empty"), (b"one\ntwo\n", "one line"), (b"\xff\xfe\x00k", "UTF-8")],
)
def test_bad_key_file_is_a_usage_error(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "key.txt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="--api-key-file") as error:
        read_api_key_file(path)
    assert says in str(error.value) and "two" not in str(error.value)  # never the content


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_key_file_is_a_usage_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "key"
    if make == "directory":
        path.mkdir()
    with pytest.raises(UsageError, match=r"--api-key-file .*key: cannot read it"):
        read_api_key_file(path)


def test_file_wins_over_the_variable(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "key.txt"
    path.write_text(KEY)
    assert resolve_api_key(path, {"IMGCLASSIFY_API_KEY": "other-key"}) == KEY
    assert "IMGCLASSIFY_API_KEY is ignored" in logs.text and KEY not in logs.text and "other-key" not in logs.text
    assert resolve_api_key(None, {"IMGCLASSIFY_API_KEY": f" {KEY}\n"}) == KEY
    assert resolve_api_key(None, {"IMGCLASSIFY_API_KEY": " "}) is None
    assert resolve_api_key(None, {}) is None


def test_workers_get_the_file_path_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text(KEY + "\n")
    env = config_to_env(ServerConfig(api_key_file=str(path)))
    assert env["IMGCLASSIFY_API_KEY_FILE"] == str(path) and env["IMGCLASSIFY_API_KEY"] == ""
    assert all(KEY not in value for value in env.values())
    assert ServerConfig.from_env(env).api_key == KEY  # each worker reads the file
    # from the variable: it stays where it was, and comes back
    env = config_to_env(ServerConfig.from_env({"IMGCLASSIFY_API_KEY": KEY}))
    assert env["IMGCLASSIFY_API_KEY"] == KEY and env["IMGCLASSIFY_API_KEY_FILE"] == ""
    assert ServerConfig.from_env(env).api_key == KEY
    assert ServerConfig.from_env(config_to_env(ServerConfig())).api_key is None


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ServerConfig, dict[str, Any]]]:
    """``serve``'s calls to the server: nothing listens."""
    calls: list[tuple[ServerConfig, dict[str, Any]]] = []
    monkeypatch.setattr("imgclassify.server.serve", lambda config, **kw: calls.append((config, kw)))
    monkeypatch.delenv("IMGCLASSIFY_API_KEY", raising=False)
    return calls


WARNING = "anyone who can reach port"


def test_open_host_without_a_key_warns_once(runner, started) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(cli_app, ["serve", "-m", "efficientnet_lite0", "--host", "0.0.0.0", "--port", "5123"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count(WARNING) == 1, result.stderr
    assert "--host 0.0.0.0" in result.stderr and "port 5123" in result.stderr
    assert "IMGCLASSIFY_API_KEY" in result.stderr and "--api-key-file" in result.stderr
    assert started and started[0][1]["host"] == "0.0.0.0" and started[0][0].api_key is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_host_does_not_warn(runner, started, host: str) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(cli_app, ["serve", "-m", "efficientnet_lite0", "--host", host])
    assert result.exit_code == 0 and WARNING not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.255.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("192.168.1.5", False), ("example.org", False), ("", False), ("128.0.0.1", False)],
)  # fmt: skip
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_open_host_with_a_key_does_not_warn(runner, started, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMGCLASSIFY_API_KEY", KEY)
    result = runner.invoke(cli_app, ["serve", "-m", "efficientnet_lite0", "--host", "0.0.0.0"])
    assert result.exit_code == 0 and WARNING not in result.stderr, result.stderr
    assert started[-1][0].api_key == KEY and started[-1][0].api_key_file is None
    monkeypatch.delenv("IMGCLASSIFY_API_KEY")
    path = tmp_path / "key.txt"
    path.write_text(KEY + "\n")
    result = runner.invoke(cli_app, ["serve", "-m", "efficientnet_lite0", "--host", "0.0.0.0", "--api-key-file", str(path)])  # fmt: skip
    assert result.exit_code == 0 and WARNING not in result.stderr, result.stderr
    config = started[-1][0]
    assert config.api_key == KEY and config.api_key_file == str(path.absolute()) and KEY not in result.output


def test_empty_key_file_is_exit_2_before_the_model(runner, started, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "empty.txt"
    path.write_text("\n")
    result = runner.invoke(cli_app, ["serve", "-m", "no-such-model", "--api-key-file", str(path)])
    assert result.exit_code == 2 and "--api-key-file" in result.stderr and "empty" in result.stderr, result.stderr
    assert started == []


def test_no_api_key_option() -> None:
    """The key is never an option's value: it would show in ``ps``."""
    from typer.main import get_command

    serve = get_command(cli_app).commands["serve"]  # type: ignore[attr-defined]
    options = {opt for param in serve.params for opt in param.opts}
    assert "--api-key-file" in options and "--api-key" not in options


# -- real servers --------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def running(tmp: Path, *args: str, key: str | None = None) -> Iterator[Server]:
    """A real ``imgclassify serve`` on loopback (``IMGCLASSIFY_API_KEY=key`` if given), ready."""
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    port = free_port()
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp / "torch_home")}
    env.pop("IMGCLASSIFY_API_KEY", None)
    if key is not None:
        env["IMGCLASSIFY_API_KEY"] = key
    log = tmp / "server.log"
    command = [exe, "serve", "-m", "efficientnet_lite0", "--host", "127.0.0.1", "--port", str(port),
               "--threads", "4", "--read-timeout", "5", *args]  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log)
        yield Server(base, port, proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("keyed"), key=KEY) as server:
        yield server


BOUNDARY = "authboundary"


def multipart(name: str = "kitten.jpg") -> bytes:
    return multipart_body([(name, (SAMPLES / name).read_bytes())], BOUNDARY)[0]


def http(base: str, method: str, path: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """status, headers (lower-case names), body; POST sends kitten.jpg."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"} if method == "POST" else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    data = multipart() if method == "POST" else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def read_reply(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The whole answer, up to the server's close (a socket.timeout if it does not answer in time)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("authorization", "challenge"), [(None, "Bearer"), ("Bearer wrong", 'Bearer error="invalid_token"')]
)
def test_401_before_the_body(keyed_server: Server, authorization: str | None, challenge: str) -> None:
    """5 MB announced, 16 KB sent: the 401 comes at once, not after the body (nor the 5 s read timeout)."""
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    head = (
        f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {5 * 1024 * 1024}\r\n{auth}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", keyed_server.port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(head + multipart()[: 16 * 1024])
        status, headers, body = read_reply(sock, timeout=3)  # read to the server's close
        took = time.monotonic() - start
    assert (status, headers["www-authenticate"], headers["connection"]) == (401, challenge, "close")
    assert body["error"] == "unauthorized" and "Authorization: Bearer <key>" in body["message"]
    assert took < 2.0, took
    metrics = http(keyed_server.base, "GET", "/metrics", f"Bearer {KEY}")[2].decode()
    assert 'imgclassify_http_requests_total{method="POST",route="/predict",status="401"}' in metrics


@pytest.mark.slow
def test_real_server_with_the_key_from_the_environment(keyed_server: Server) -> None:
    status, _, body = http(keyed_server.base, "POST", "/predict", f"Bearer {KEY}")
    assert status == 200 and json.loads(body)["class_name"] == "tiger_cat"
    for path in ("/healthz", "/readyz", "/"):
        assert http(keyed_server.base, "GET", path)[0] == 200, path
    for method, path in (("POST", "/predict"), ("GET", "/info"), ("GET", "/metrics")):
        status, headers, body = http(keyed_server.base, method, path)
        assert (status, headers["www-authenticate"]) == (401, "Bearer"), path
        assert json.loads(body)["error"] == "unauthorized" and KEY not in body.decode()
    status, _, body = http(keyed_server.base, "GET", "/info", f"Bearer {KEY}")
    assert status == 200 and json.loads(body)["server"]["requires_api_key"] is True and KEY not in body.decode()
    log = keyed_server.log.read_text()
    assert '"POST /predict" 401' in log and '"POST /predict" 200' in log and KEY not in log


def _processes(root: int) -> list[int]:
    """``root`` and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_after_name = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields_after_name[1])
    found = [root]
    for pid in found:
        found.extend(child for child, parent in parents.items() if parent == pid)
    return found


@pytest.mark.slow
def test_key_file_reaches_every_worker_and_no_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{KEY}\n")
    with running(tmp_path, "--workers", "2", "--api-key-file", str(key_file)) as server:
        for _ in range(6):  # answered by either worker: each read the file
            assert http(server.base, "POST", "/predict")[0] == 401
            status, _, body = http(server.base, "POST", "/predict", f"Bearer {KEY}")
            assert status == 200 and json.loads(body)["class_id"] == 282
        assert http(server.base, "GET", "/healthz")[0] == 200
        if Path("/proc/self/environ").exists():
            pids = _processes(server.proc.pid)
            assert len(pids) >= 3, pids  # the supervisor and its 2 workers
            for pid in pids:
                for part in ("environ", "cmdline"):
                    with contextlib.suppress(OSError):  # a helper process that has just gone
                        assert KEY.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)
    assert KEY not in server.log.read_text()


@pytest.mark.slow
def test_page_asks_for_the_key_on_401_and_keeps_it(keyed_server: Server, tmp_path: Path) -> None:
    from test_report import CHROMIUM, Chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (the test extra has it)")
    from PIL import Image

    big = tmp_path / "noise.png"  # a few MB: the 401 comes while the browser is still sending
    Image.frombytes("RGB", (1200, 900), os.urandom(1200 * 900 * 3)).save(big)
    seen = len(keyed_server.log.read_text())
    browser = Chromium(tmp_path / "chromium-profile")

    def wait(expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not browser.js(expression):
            assert time.monotonic() < deadline, f"{expression}: " + browser.js("document.body.innerText")[:500]
            time.sleep(0.1)

    def pick(*paths: Path) -> None:
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        node = browser.send("DOM.querySelector", nodeId=root, selector="#files")
        browser.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(p) for p in paths])

    def answer(text: str) -> None:
        browser.type("#key", text)
        browser.click("#key-form button[type=submit]")

    shown = "!document.getElementById('key-form').hidden"
    done = "document.querySelectorAll('.result[data-state=done]').length"
    try:
        browser.send("DOM.enable")
        browser.send("Page.navigate", url=keyed_server.base + "/")
        wait("document.readyState === 'complete' && document.title === 'imgclassify'")
        wait("document.getElementById('model-name').textContent === 'efficientnet_lite0'")  # /readyz is open
        assert not browser.js(shown)
        pick(big, SAMPLES / "labrador.jpg")  # two uploads refused together: one question
        wait(shown)
        assert browser.js("document.getElementById('key-message').textContent") == "This server needs an API key."
        answer("wrong-key")
        wait(f"{shown} && document.getElementById('key-message').textContent.includes('refused')")
        answer(KEY)
        wait(f"{done} === 2")
        assert not browser.js(shown) and browser.js("document.getElementById('key').value") == ""
        pick(SAMPLES / "kitten.jpg")  # the key is kept: no question
        wait(f"{done} === 3")
        assert not browser.js(shown)
        rows = browser.js("Array.from(document.querySelectorAll('.result .row')).map(r => Number(r.dataset.classId))")
        assert {282, 208} <= set(rows)
        stored = "[localStorage.length, sessionStorage.length, document.cookie, location.href]"
        assert browser.js(stored) == [0, 0, "", keyed_server.base + "/"]
        problems = [e for e in browser.errors() if "401" not in json.dumps(e)]  # the refused uploads' console lines
        assert problems == []
    finally:
        browser.close()
    log = keyed_server.log.read_text()[seen:]
    # first: both uploads without a key; then both with the wrong one; then 2 + 1 with the key
    assert log.count('"POST /predict" 401') == 4 and log.count('"POST /predict" 200') == 3, log
