"""What users get: the built wheel, installed into a fresh virtual environment outside the source tree.

An editable install once hid a wheel that lacked three subpackages: every test passed while every
command failed for users. These tests build the wheel from this checkout, compare its files with
the package's files, install it into a new virtual environment and run the tool from there.

Installing torch into each new environment would take gigabytes, so the new environment borrows
the test environment's third-party packages through a path file (lines in a ``.pth`` file add
folders to ``sys.path`` without running the ``.pth`` files inside them, so an editable install of
imgclassify there stays invisible); imgclassify itself comes only from the wheel, which the tests
check by where it is imported from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, free_port, multipart_body, wait_until_ready


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel`` of ``source`` (no build isolation: no network; setuptools comes from the test extra)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("imgclassify-*.whl")
    return wheel


def package_files(root: Path) -> set[str]:
    """Every file of the package in the source tree (what git tracks, or all files outside caches)."""
    tracked = subprocess.run(["git", "ls-files", "imgclassify"], cwd=root, capture_output=True, text=True, check=False)
    if tracked.returncode == 0 and tracked.stdout.strip():
        names = set(tracked.stdout.split())
        return {n for n in names if (root / n).is_file()}
    return {
        str(p.relative_to(root))
        for p in (root / "imgclassify").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # build from a copy, so that the checkout gets no build/ or egg-info
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "imgclassify", source / "imgclassify", ignore=shutil.ignore_patterns("__pycache__"))
    return build_wheel(source, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A new virtual environment with imgclassify[serve] installed from the wheel, nothing from the source tree."""
    venv = tmp_path_factory.mktemp("user") / "venv"
    # no pip of its own (its bundled setuptools would shadow the borrowed one): this pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(borrowed)))
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index"]
    # the wheel itself, into the new environment (whatever imgclassify the borrowed folders hold)
    done = subprocess.run([*pip, "--no-deps", "--ignore-installed", str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # then its requirements and the serve extra's, resolved offline: each must be there, or pip fails
    done = subprocess.run(
        [*pip, "--find-links", str(wheel.parent), "imgclassify[serve]"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def in_venv(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(IMGCLASSIFY_OFFLINE="1", TORCH_HOME=str(cwd / "torch_home"), PATH=f"{venv / 'bin'}:/usr/bin:/bin")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_holds_every_package_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    expected = package_files(ROOT)
    assert {
        "imgclassify/inference/__init__.py",
        "imgclassify/run/engines/ray.py",
        "imgclassify/data/imagenet_labels.json",
    } <= expected
    assert expected - names == set(), "files of the package missing from the wheel"
    extra = {n for n in names if not n.startswith("imgclassify-")} - expected
    assert extra == set(), "files in the wheel that the source tree lacks"
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(wheel) as z:
        text = z.read(metadata).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in text
    assert "Provides-Extra: serve" in text


@pytest.mark.slow
def test_installed_wheel_runs_from_outside_the_source_tree(user_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "samples").mkdir()
    shutil.copy(SAMPLES / "kitten.jpg", tmp_path / "samples" / "kitten.jpg")
    where = in_venv(user_venv, "python", "-c", "import imgclassify; print(imgclassify.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(user_venv), where.stdout

    version = in_venv(user_venv, "imgclassify", "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, "imgclassify 0.1.0\n"), version.stderr

    out = in_venv(user_venv, "imgclassify", "predict", "samples/kitten.jpg", "-m", "efficientnet_lite0", "-f",
                  "jsonl", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (record["path"], record["class_id"], record["class_name"]) == ("samples/kitten.jpg", 282, "tiger_cat")

    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(IMGCLASSIFY_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch_home"))
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(user_venv / "bin" / "imgclassify"), "serve", "-m", "efficientnet_lite0", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, proc, log)
        body, boundary = multipart_body([("kitten.jpg", (SAMPLES / "kitten.jpg").read_bytes())])
        request = urllib.request.Request(
            base + "/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["class_id"] == 282 and answer["class_name"] == "tiger_cat", answer
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_extras_table_matches_the_package_metadata() -> None:
    """The install hints name each extra's packages: the same as pyproject.toml's optional dependencies."""
    import re
    from importlib import metadata

    import tomllib

    from imgclassify.extras import EXTRAS, install_hint

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    name = re.compile(r"^[A-Za-z0-9_.-]+(\[[^\]]+\])?")
    for extra, packages in EXTRAS.items():
        assert tuple(name.match(r).group(0) for r in declared[extra]) == packages, extra  # type: ignore[union-attr]
    assert set(declared) - {"test"} == set(EXTRAS)
    installed = metadata.metadata("imgclassify").get_all("Provides-Extra") or []
    assert set(EXTRAS) <= set(installed)
    hint = install_hint("openvino")
    assert "pipx inject imgclassify openvino nncf" in hint
    assert "pip install 'imgclassify[openvino]'" in hint and "pip install '.[openvino]'" in hint
