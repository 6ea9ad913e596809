"""Slow clients against a real `imgclassify serve`: stalled uploads hold no request thread, are
cut off after --read-timeout with a JSON 408, the 413 comes before the body, nothing on disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SAMPLES, free_port, wait_until_ready

THREADS = 2
READ_TIMEOUT = 3.0  # long enough that a normal answer under 2 s proves stalled uploads hold no thread
BOUNDARY = "slowboundary"


#: runs `imgclassify serve`, noting in $TEMPFILE_LOG every temporary file the process creates
SPY = """
import os, sys, tempfile
def spy(name, make):
    def wrapped(*args, **kwargs):
        with open(os.environ["TEMPFILE_LOG"], "a") as note:
            note.write(name + "\\n")
        return make(*args, **kwargs)
    return wrapped
for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp", "mkdtemp"):
    setattr(tempfile, name, spy(name, getattr(tempfile, name)))
sys.argv[0] = "imgclassify"
from imgclassify.cli import app
app()
"""


@dataclass
class Server:
    base: str
    port: int
    tmpdir: Path
    tempfile_log: Path
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    tmpdir = tmp_path_factory.mktemp("server_tmp")  # TMPDIR of the server: must stay empty
    log = tmp_path_factory.mktemp("log") / "server.log"
    tempfile_log = log.with_name("tempfiles.log")
    tempfile_log.touch()
    env = {
        **os.environ,
        "IMGCLASSIFY_OFFLINE": "1",
        "TORCH_HOME": str(tmp_path_factory.mktemp("th")),
        "TMPDIR": str(tmpdir),
        "TEMPFILE_LOG": str(tempfile_log),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor")),  # torch's own, not an upload
    }
    cmd = [
        sys.executable,
        "-c",
        SPY,
        "serve",
        "--port",
        str(port),
        "--threads",
        str(THREADS),
        "--read-timeout",
        str(READ_TIMEOUT),
    ]
    with open(log, "w") as err:
        proc = subprocess.Popen([*cmd, "--max-upload-mb", "8"], stdout=subprocess.DEVNULL, stderr=err, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log)
        yield Server(base, port, tmpdir, tempfile_log, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()  # graceful shutdown on SIGTERM


def multipart(data: bytes, name: str = "kitten.jpg") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def request_head(length: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def parse(reply: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post_kitten(base: str) -> tuple[int, dict[str, object]]:
    payload = multipart((SAMPLES / "kitten.jpg").read_bytes())
    request = urllib.request.Request(
        base + "/predict", data=payload, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, json.loads(r.read())


def test_stalled_uploads_do_not_block_and_are_cut_off_with_json_408(server: Server) -> None:
    payload = multipart((SAMPLES / "kitten.jpg").read_bytes())
    stalled = []
    for _ in range(4 * THREADS):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(request_head(len(payload)) + payload[: len(payload) // 2])
        stalled.append(sock)
    opened = time.monotonic()
    try:
        time.sleep(0.3)
        start = time.monotonic()
        status, body = post_kitten(server.base)
        took = time.monotonic() - start
        assert status == 200 and body["class_name"] == "tiger_cat"
        assert took < 2.0, f"normal request took {took:.2f} s with {len(stalled)} stalled uploads"
        for sock in stalled:  # each stalled upload: a JSON 408 after the read timeout, then closed
            status, body = parse(read_all(sock, timeout=READ_TIMEOUT + 10))
            assert status == 408 and body["error"] == "request_timeout", body
            assert isinstance(body["message"], str)
        waited = time.monotonic() - opened
        assert READ_TIMEOUT - 0.5 <= waited < READ_TIMEOUT + 5, waited
    finally:
        for sock in stalled:
            sock.close()
    assert '"POST /predict" 408' in server.log.read_text()


def test_stalled_request_head_is_closed_after_the_read_timeout(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\n")  # the head never ends
        start = time.monotonic()
        assert read_all(sock, timeout=READ_TIMEOUT + 10) == b""  # no request to answer: closed
        assert READ_TIMEOUT - 0.5 <= time.monotonic() - start < READ_TIMEOUT + 5


def test_huge_content_length_is_refused_before_the_body(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(request_head(10 * 1024**3))  # 10 GB announced, nothing sent
        status, body = parse(read_all(sock, timeout=5))
        assert time.monotonic() - start < 1.0
    assert status == 413 and body["error"] == "request_entity_too_large" and "8 MB" in str(body["message"])


def test_chunked_body_over_the_limit_is_refused(server: Server) -> None:
    """No Content-Length: refused with 413 as soon as the body passes the limit. The client may
    still be sending when the server closes, so the kernel can reset the connection before the
    answer is read: then the server's log line is the evidence."""
    reply = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        )
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(9):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            reply = read_all(sock, timeout=10)
        except OSError:  # reset: see above
            pass
    if reply:
        status, body = parse(reply)
        assert status == 413 and body["error"] == "request_entity_too_large"
    time.sleep(0.2)
    assert '"POST /predict" 413' in server.log.read_text()


def test_big_upload_stays_in_memory(server: Server) -> None:
    """A 5 MB upload: the server's TMPDIR stays empty (nothing spooled to a temporary file)."""
    payload = multipart(os.urandom(5 * 1024 * 1024), name="noise.jpg")
    before = sorted(server.tmpdir.rglob("*"))
    made = server.tempfile_log.read_text()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request_head(len(payload)) + payload)
        reply = read_all_response(sock)
    status, body = parse(reply)
    assert status == 422 and body["error"] == "invalid_image"
    assert sorted(server.tmpdir.rglob("*")) == before == []
    assert server.tempfile_log.read_text() == made, "the upload went through a temporary file"


def read_all_response(sock: socket.socket) -> bytes:
    """One keep-alive response: read until Content-Length is satisfied."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_keep_alive_connection_serves_several_requests(server: Server) -> None:
    payload = multipart((SAMPLES / "kitten.jpg").read_bytes())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(request_head(len(payload)) + payload)
            status, body = parse(read_all_response(sock))
            assert status == 200 and body["class_id"] == 282
