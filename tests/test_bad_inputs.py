"""The bad-input matrix: every kind of hostile or odd file gives an error record with a clear
reason, or a correct prediction where the file is a valid image, and never touches the other
files' results. Also through the server."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import SAMPLES, parse_jsonl
from imgclassify import load_classifier
from imgclassify.cli import app
from imgclassify.imaging import DecodeOptions

LAB = 208  # labrador.jpg's class with efficientnet_lite0


def labrador() -> Image.Image:
    with Image.open(SAMPLES / "labrador.jpg") as image:
        return image.convert("RGB")


def png_header_bomb(path: Path, width: int, height: int) -> None:
    """A tiny PNG that claims to be width x height (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def make_matrix(folder: Path) -> dict[str, tuple[Path, str | int | None]]:
    """name -> (file, expected): an int class, a substring of the error, or None for 'any class'."""
    folder.mkdir(parents=True, exist_ok=True)
    lab = labrador()
    jpeg = (SAMPLES / "labrador.jpg").read_bytes()
    cases: dict[str, tuple[Path, str | int | None]] = {}

    def add(name: str, expected: str | int | None) -> Path:
        path = folder / name
        cases[name] = (path, expected)
        return path

    add("zero.jpg", "empty file").write_bytes(b"")
    add("truncated.jpg", "truncated image file").write_bytes(jpeg[: len(jpeg) // 2])
    add("random.jpg", "not an image").write_bytes(os.urandom(4096))
    add("notes.txt", "not an image").write_text("hello\n")
    add("doc.pdf", "not an image").write_bytes(
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )
    gif = add("animated.gif", LAB)
    frames = [lab.convert("P", palette=Image.Palette.ADAPTIVE), Image.open(SAMPLES / "kitten.jpg").convert("P")]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    lab.save(add("photo.webp", LAB), quality=95)
    lab.save(add("photo.bmp", LAB))
    gray16 = Image.fromarray(__import__("numpy").asarray(lab.convert("L")).astype("uint16") * 257)
    gray16.save(add("gray16.tif", LAB))
    lab.save(add("pages.tif", LAB), save_all=True, append_images=[Image.open(SAMPLES / "kitten.jpg").convert("RGB")])
    lab.convert("RGBA").save(add("alpha.png", LAB))
    pal = lab.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    pal.info["transparency"] = 0
    pal.save(add("palette_transparency.png", LAB), transparency=0)
    lab.convert("CMYK").save(add("cmyk.jpg", LAB), quality=95)
    lab.convert("L").save(add("gray.png", LAB))
    for orientation, transpose in (
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
    ):
        exif = Image.Exif()
        exif[0x0112] = orientation
        lab.transpose(transpose).save(add(f"exif{orientation}.png", LAB), exif=exif)
    Image.new("RGB", (1, 1), (120, 90, 60)).save(add("one_pixel.png", None))
    png_header_bomb(add("bomb.png", "image too large"), 20000, 20000)
    os.symlink(folder / "does-not-exist.jpg", add("broken_link.jpg", "file not found"))
    shutil.copy(SAMPLES / "labrador.jpg", add("unicode кошка 猫.jpg", LAB))
    shutil.copy(SAMPLES / "labrador.jpg", add('comma, "quote"\nnewline.jpg', LAB))
    return cases


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str | int | None]]:
    return make_matrix(tmp_path_factory.mktemp("matrix"))


def check(name: str, expected: str | int | None, record: dict[str, object]) -> None:
    if isinstance(expected, str):
        assert record["class_id"] is None and expected in str(record["error"]), (name, record)
    else:
        assert record["error"] is None, (name, record)
        assert expected is None or record["class_id"] == expected, (name, record)


@pytest.mark.parametrize("workers", [0, 2])
def test_matrix_through_the_library(lite0, matrix, workers: int) -> None:  # type: ignore[no-untyped-def]
    names = sorted(matrix)
    good = SAMPLES / "brittany.jpg"
    paths = []
    for name in names:  # a good photo after every bad one: its result must not change
        paths += [matrix[name][0], good]
    preds = list(lite0.predict(paths, batch_size=4, workers=workers))
    reference = lite0.predict_file(good)
    for i, name in enumerate(names):
        check(name, matrix[name][1], preds[2 * i].to_dict())
        assert preds[2 * i + 1].top == reference.top


def test_exif_orientations_match_the_upright_photo(lite0, matrix) -> None:  # type: ignore[no-untyped-def]
    upright = lite0.predict_file(SAMPLES / "labrador.jpg", top_k=3)
    for orientation in (3, 6, 8):
        pred = lite0.predict_file(matrix[f"exif{orientation}.png"][0], top_k=3)
        assert [c.class_id for c in pred.top] == [c.class_id for c in upright.top]
        # a lossless rotation of the decoded JPEG: same pixels, same probabilities
        assert [c.probability for c in pred.top] == pytest.approx([c.probability for c in upright.top], abs=1e-4)


def test_truncated_allowed_on_request(lite0, matrix) -> None:  # type: ignore[no-untyped-def]
    clf = load_classifier("efficientnet_lite0", device="cpu", decode=DecodeOptions(allow_truncated=True))
    pred = clf.predict_file(matrix["truncated.jpg"][0])
    assert pred.error is None and pred.class_id is not None
    assert lite0.predict_file(matrix["truncated.jpg"][0]).error == "truncated image file"


def test_big_jpeg_decodes_at_reduced_scale_under_max_pixels(tmp_path: Path) -> None:
    lab = labrador()
    big = lab.resize((lab.width * 4, lab.height * 4), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=92)
    big.save(tmp_path / "big.png")
    clf = load_classifier("efficientnet_lite0", device="cpu", decode=DecodeOptions(max_pixels=1_000_000))
    assert big.width * big.height > 1_000_000
    jpeg, png = clf.predict_file(tmp_path / "big.jpg"), clf.predict_file(tmp_path / "big.png")
    assert jpeg.error is None and jpeg.class_id == LAB
    assert png.error is not None and "image too large: 2000x2184 pixels" in png.error


def test_permission_denied(lite0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secret.jpg"
    shutil.copy(SAMPLES / "labrador.jpg", path)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user
        real_open = os.open

        def denied(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            if os.fspath(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    assert lite0.predict_file(path).error == "permission denied"


def test_file_deleted_between_listing_and_reading(lite0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from imgclassify.sources import expand_inputs

    for name in ("a.jpg", "b.jpg"):
        shutil.copy(SAMPLES / "labrador.jpg", tmp_path / name)
    found = expand_inputs([str(tmp_path)])
    (tmp_path / "a.jpg").unlink()
    preds = list(lite0.predict(found.paths))
    assert preds[0].error == "file not found" and preds[1].class_id == LAB


def test_failure_inside_a_worker_stays_with_its_file(lite0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import imgclassify.pipeline as pipeline

    real = pipeline.load_tensor  # type: ignore[attr-defined]
    poison = str(tmp_path / "poison.jpg")
    shutil.copy(SAMPLES / "labrador.jpg", poison)

    def flaky(source, config, options=None):  # type: ignore[no-untyped-def]
        if str(source) == poison:
            raise RuntimeError("decoder bug")
        return real(source, config, options)

    monkeypatch.setattr(pipeline, "load_tensor", flaky)  # forked workers inherit it
    paths = [str(SAMPLES / "dog.jpg"), poison, str(SAMPLES / "brittany.jpg")]
    preds = list(lite0.predict(paths, batch_size=3, workers=2))
    assert preds[1].error == "cannot decode image: RuntimeError: decoder bug"
    assert [preds[0].class_id, preds[2].class_id] == [222, 215]


def test_non_utf8_and_odd_names_in_every_format(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import csv

    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"  # Latin-1 bytes: not valid UTF-8
    shutil.copy(os.fsencode(SAMPLES / "labrador.jpg"), raw)
    shutil.copy(SAMPLES / "labrador.jpg", folder / 'comma, "quote"\nnewline.jpg')
    shutil.copy(SAMPLES / "labrador.jpg", folder / "猫.jpg")
    lines = runner.invoke(app, ["predict", str(folder), "-m", "efficientnet_lite0", "-f", "jsonl"]).stdout
    records = parse_jsonl(lines)
    names = sorted(os.path.basename(str(r["path"])) for r in records)
    assert names == sorted(["caf\udce9.jpg", 'comma, "quote"\nnewline.jpg', "猫.jpg"])
    assert all(r["class_id"] == LAB for r in records)
    lines.encode("utf-8")  # valid UTF-8 on stdout
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(folder), "-m", "efficientnet_lite0", "-o", str(out)])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert sorted(os.path.basename(r["path"]) for r in rows) == sorted(
        ["caf\\xe9.jpg", 'comma, "quote"\nnewline.jpg', "猫.jpg"]
    )


def test_matrix_through_the_server(lite0, matrix) -> None:  # type: ignore[no-untyped-def]
    from imgclassify.server import ServerConfig, create_app

    client = create_app(ServerConfig(), classifier=lite0, warm_up_async=False).test_client()
    for name, (path, expected) in matrix.items():
        if not path.exists() or path.is_symlink():
            continue  # links and names are about the file system, not uploads
        response = client.post(
            "/predict", data={"file": (io.BytesIO(path.read_bytes()), "upload")}, content_type="multipart/form-data"
        )
        body = response.get_json()
        if isinstance(expected, str):
            assert response.status_code == 422 and expected in body["message"], (name, body)
        else:
            assert response.status_code == 200, (name, body)
            assert expected is None or body["class_id"] == expected, (name, body)


def test_server_refuses_oversized_body_without_reading_it(lite0) -> None:  # type: ignore[no-untyped-def]
    from imgclassify.server import ServerConfig, create_app

    class Unreadable(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def tell(self) -> int:
            return 0

        def seek(self, offset: int, whence: int = 0) -> int:
            return 0

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            raise AssertionError("the body was read")

    client = create_app(ServerConfig(max_upload_mb=1), classifier=lite0, warm_up_async=False).test_client()
    response = client.post(
        "/predict", input_stream=Unreadable(), content_type="multipart/form-data; boundary=x",
        environ_overrides={"CONTENT_LENGTH": str(50 * 1024 * 1024)},
    )  # fmt: skip
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"


def test_cli_bad_matrix_exit_code_and_summary(runner, matrix, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app, ["predict", *[str(p) for p, _ in matrix.values()], "-m", "efficientnet_lite0", "-f", "json"]
    )
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert len(records) == len(matrix)
    failed = sum(isinstance(expected, str) for _, expected in matrix.values())
    assert f"{len(matrix) - failed} classified, {failed} failed" in result.stderr
