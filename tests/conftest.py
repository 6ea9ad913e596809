"""Shared fixtures. Every test runs offline with an empty torch hub cache unless it says otherwise."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
#: 50 ImageNet photos, file name = <wnid>_<name>.JPEG (copied from ../shared: the tests stand alone)
LABELLED = ROOT / "tests" / "data" / "imagenet-labelled"
DENSENET_FILE = "densenet121-a639ec97.pth"  # torchvision's file name in the hub cache


def _imported_package() -> Path:
    import imgclassify

    return Path(imgclassify.__file__).resolve().parent


def pytest_report_header() -> str:
    return f"imgclassify imported from {_imported_package()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """With IMGCLASSIFY_TEST_INSTALLED=1 (what .ci/run sets) the suite runs only against the installed wheel."""
    if os.environ.get("IMGCLASSIFY_TEST_INSTALLED") == "1" and _imported_package() == ROOT / "imgclassify":
        raise pytest.UsageError(
            f"IMGCLASSIFY_TEST_INSTALLED=1 but imgclassify is imported from the source tree ({_imported_package()}): "
            "install the wheel (pip install '.[test]', not -e) and set PYTHONSAFEPATH=1 so that the current "
            "directory is not put on sys.path"
        )


@pytest.fixture(autouse=True)
def offline_empty_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No downloads, and a torch hub cache that holds nothing."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("IMGCLASSIFY_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def lite0():  # type: ignore[no-untyped-def]
    from imgclassify import load_classifier

    return load_classifier("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def densenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DenseNet-121 state_dict with random weights (real ones cannot be downloaded here)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None)
    path = tmp_path_factory.mktemp("weights") / "densenet121-random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def cached_densenet(offline_empty_cache: Path, densenet_weights: Path) -> Path:
    """The random DenseNet-121 placed where torchvision's hub cache keeps the real file."""
    checkpoints = offline_empty_cache / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    target = checkpoints / DENSENET_FILE
    shutil.copyfile(densenet_weights, target)
    return target


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Write a variant of a sample photo: ``make_image("x.png", mode="L")``."""

    def make(name: str, *, source: str = "labrador.jpg", mode: str | None = None, **save: object) -> Path:
        image: Image.Image = Image.open(SAMPLES / source)
        if mode is not None:
            image = image.convert(mode)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **save)  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """Files that must each give an error record: corrupt, truncated, empty, not an image."""
    folder = tmp_path / "bad"
    folder.mkdir()
    jpeg = (SAMPLES / "kitten.jpg").read_bytes()
    files = {
        "corrupt": folder / "corrupt.jpg",
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.jpg",
        "text": folder / "notes.jpg",
    }
    files["corrupt"].write_bytes(os.urandom(2048))
    files["truncated"].write_bytes(jpeg[: len(jpeg) // 3])
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\n")
    return files


def parse_jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def cwd_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Poll ``base``/readyz until 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"server not ready in {timeout:.0f} s:\n" + log.read_text()
        time.sleep(0.25)


def multipart_body(files: list[tuple[str, bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with each file in the field ``file``, and its boundary."""
    import uuid

    boundary = boundary or uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary
