"""The bad-input matrix: every kind of hostile or odd file gives an error record with a clear
reason, or a correct prediction where the file is a valid image, and never touches the other
files' results. Also through the server."""

from __future__ import annotations

import contextlib
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
from imgclassify.decode.imaging import DecodeOptions

LAB = 208  # labrador.jpg's class with efficientnet_lite0


def labrador() -> Image.Image:
    with Image.open(SAMPLES / "labrador.jpg") as image:
        return image.convert("RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(path: Path, width: int, height: int) -> None:
    """A tiny PNG that claims to be width x height (a decompression bomb)."""
    chunk = png_chunk

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def tiff_header_bomb(path: Path, width: int, height: int) -> None:
    """A tiny TIFF whose first IFD claims width x height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            struct.pack_into(
                "<HHII" if kind == 4 else "<HHIHH", data, entry, tag, kind, 1, value, *([] if kind == 4 else [0])
            )
    path.write_bytes(bytes(data))


def gif_frame_beyond_screen(path: Path, width: int, height: int) -> None:
    """A GIF whose logical screen is 1x1 and whose first frame claims width x height."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    path.write_bytes(screen + descriptor + b"\x02\x02\x4c\x01\x00" + b";")


def ico_lying_about_size(path: Path, inner: Image.Image) -> None:
    """An ICO whose directory says 16x16 while the PNG inside is ``inner``'s size."""
    buffer = io.BytesIO()
    inner.save(buffer, format="PNG")
    png = buffer.getvalue()
    header = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22)
    path.write_bytes(header + png)


def strip_of(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A 1-pixel-thin image of ``size``: the photo's middle row or column, stretched."""
    width, height = image.size
    if size[1] == 1:
        return image.crop((0, height // 2, width, height // 2 + 1)).resize(size)
    return image.crop((width // 2, 0, width // 2 + 1, height)).resize(size)


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
    # extreme aspect ratios, every format: the resize to 256 would be 25,600,000 x 256 pixels
    for ext, long in (
        ("png", 100_000),
        ("jpg", 60_000),
        ("gif", 60_000),
        ("tif", 60_000),
        ("webp", 16_383),
        ("bmp", 60_000),
    ):
        strip_of(lab, (long, 1)).save(add(f"wide_{long}x1.{ext}", None))
        strip_of(lab, (1, long)).save(add(f"tall_1x{long}.{ext}", None))
    many = [lab.resize((64, 64)).convert("P")] + [Image.new("P", (64, 64), i % 256) for i in range(1, 300)]
    many[0].save(add("many_frames.gif", None), save_all=True, append_images=many[1:], duration=10)
    np = __import__("numpy")
    gray = np.asarray(lab.convert("L"), dtype=np.float32) / 255.0
    Image.fromarray(gray * 40.0 - 7.0).save(add("float.tif", LAB))
    gray[10, 10] = float("nan")  # Pillow's extrema skip NaN; the pixel becomes 0
    Image.fromarray(gray).save(add("float_nan.tif", LAB))
    gray[10, 10] = float("inf")
    Image.fromarray(gray).save(add("float_inf.tif", "infinite pixels"))
    Image.fromarray(np.asarray(lab.convert("L")).astype(np.int32) * 65536).save(add("int32.tif", LAB))
    lab.save(add("photo.avif", LAB), quality=90)
    try:
        import pillow_heif

        pillow_heif.from_pillow(lab).save(add("photo.heic", LAB), quality=90)
    except ImportError:
        pass
    os.mkfifo(add("fifo.jpg", "not a regular file"))
    os.symlink("/dev/zero", add("dev_zero.jpg", "not a regular file"))
    tiff_header_bomb(add("bomb.tif", "image too large: 20000x20000"), 20000, 20000)
    gif_frame_beyond_screen(add("gif_frame_beyond_screen.gif", "image too large"), 20000, 20000)
    ico_lying_about_size(add("ico_lying_about_size.ico", None), strip_of(lab, (1, 30_000)))
    lab.save(add("huge_icc.jpg", LAB), quality=95, icc_profile=os.urandom(2_000_000))
    add("postscript.jpg", "EPS/PostScript is not decoded").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\nshowpage\n"
    )
    text_bomb = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 50_000_000, 9))  # 50 MB of text in 50 KB
    one_pixel = (folder / "one_pixel.png").read_bytes()
    add("ztxt_bomb.png", "Decompressed data too large").write_bytes(
        one_pixel[:33] + text_bomb + one_pixel[33:]
    )  # after IHDR
    big_exif = Image.Exif()
    big_exif[0x010E] = "x" * 60_000  # ImageDescription: an EXIF block near its 64 KB limit
    big_exif[0x0112] = 1
    lab.save(add("huge_exif.jpg", LAB), quality=95, exif=big_exif)
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
    from imgclassify.run.inputs import expand_inputs

    for name in ("a.jpg", "b.jpg"):
        shutil.copy(SAMPLES / "labrador.jpg", tmp_path / name)
    found = expand_inputs([str(tmp_path)])
    (tmp_path / "a.jpg").unlink()
    preds = list(lite0.predict(found.paths))
    assert preds[0].error == "file not found" and preds[1].class_id == LAB


def test_failure_inside_a_worker_stays_with_its_file(lite0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import imgclassify.decode.decoder as decoding  # where Decoder finds load_tensor

    real = decoding.load_tensor  # type: ignore[attr-defined]
    poison = str(tmp_path / "poison.jpg")
    shutil.copy(SAMPLES / "labrador.jpg", poison)

    def flaky(source, config, options=None):  # type: ignore[no-untyped-def]
        if str(source) == poison:
            raise RuntimeError("decoder bug")
        return real(source, config, options)

    monkeypatch.setattr(decoding, "load_tensor", flaky)  # forked workers inherit it
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
    from imgclassify.server.app import ServerConfig, create_app

    client = create_app(ServerConfig(), classifier=lite0, warm_up_async=False).test_client()
    for name, (path, expected) in matrix.items():
        if not path.is_file() or path.is_symlink():
            continue  # links, FIFOs and names are about the file system, not uploads
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
    from imgclassify.server.app import ServerConfig, create_app

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


# -- memory: one image's peak is bounded by BYTES_PER_PIXEL x --max-pixels, whatever its shape --

PEAK_RSS = Path(__file__).resolve().parent.parent / "scripts" / "peak_rss.py"
MIB = 1024 * 1024


def peak_rss(files: list[Path], *, max_pixels: int | None = None, limit_mb: int = 4000) -> dict[str, object]:
    """Decode and preprocess ``files`` in a fresh process capped by RLIMIT_AS; its peak RSS."""
    import subprocess
    import sys

    command = [sys.executable, str(PEAK_RSS), *map(str, files), "--limit-mb", str(limit_mb)]
    if max_pixels is not None:
        command += ["--max-pixels", str(max_pixels)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PEAK_RSS.parent.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=True)
    record: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return record


def test_one_pixel_thin_images_take_megabytes_not_gigabytes(tmp_path: Path) -> None:
    """The reported bug: a 1 x 100,000 PNG grew the process past 23 GB (resize to 25,600,000 x 256)."""
    files = []
    for size in ((100_000, 1), (1, 100_000), (16_383, 1)):
        files.append(tmp_path / f"{size[0]}x{size[1]}.{'webp' if 16_383 in size else 'png'}")
        Image.new("RGB", size, (120, 90, 60)).save(files[-1])
    record = peak_rss(files, limit_mb=1000)  # before the fix: a MemoryError under this cap
    assert record["results"] == ["(3, 224, 224)"] * 3, record
    assert float(record["image_mb"]) < 64, record  # type: ignore[arg-type]


def test_extreme_aspect_crop_path_is_the_center_crop_of_the_resize() -> None:
    from imgclassify.decode.imaging import preprocess
    from imgclassify.models.registry import get_spec

    config = get_spec("densenet121").preprocess
    rng = __import__("numpy").random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (20, 6000, 3), dtype="uint8"))  # resized: 76800 x 256
    from torchvision.transforms import functional as F

    reference = F.pil_to_tensor(F.center_crop(F.resize(image, 256), [224, 224])).int()
    assert (preprocess(image, config).int() - reference).abs().max() <= 3  # same filter; pass order may differ


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "rgba.png",
        "rgb_exif6.png",
        "float.tif",
        "gray16.tif",
        "cmyk.jpg",
        "rgb.webp",
        "palette.gif",
        "rgb.avif",
        "rgb.heic",
        "rgb.jp2",
    ],
)
def test_peak_memory_within_the_documented_bound(tmp_path: Path, kind: str) -> None:
    """peak <= BYTES_PER_PIXEL x --max-pixels + 64 MB, measured on 20-megapixel images."""
    import numpy as np

    from imgclassify.decode.imaging import BYTES_PER_PIXEL, DECODE_COST

    width, height = 4000, 5000
    base = (np.add.outer(np.arange(height) // 7, np.arange(width) // 5) % 256).astype(np.uint8)
    rgb = Image.fromarray(np.stack([base, base[::-1], base[:, ::-1]], 2))
    path = tmp_path / kind
    exif = Image.Exif()
    exif[0x0112] = 6
    image, save = {
        "rgba.png": (rgb.convert("RGBA"), {"compress_level": 1}),
        "rgb_exif6.png": (rgb, {"compress_level": 1, "exif": exif}),
        "float.tif": (Image.fromarray(base.astype(np.float32) / 255), {}),
        "gray16.tif": (Image.fromarray(base.astype(np.uint16) * 257), {}),
        "cmyk.jpg": (rgb.convert("CMYK"), {"quality": 90}),
        "rgb.webp": (rgb, {"quality": 50, "method": 0}),
        "palette.gif": (rgb.convert("P"), {}),
        "rgb.avif": (rgb, {"quality": 50, "speed": 10}),
        "rgb.heic": (rgb, {"quality": 50}),
        "rgb.jp2": (rgb, {"quality_mode": "rates", "quality_layers": [20]}),
    }[kind]
    if kind.endswith(".heic"):
        pytest.importorskip("pillow_heif").from_pillow(image).save(path, **save)  # type: ignore[arg-type]
    else:
        image.save(path, **save)  # type: ignore[arg-type]
    cost = DECODE_COST.get(
        {"webp": "WEBP", "avif": "AVIF", "heic": "HEIF", ".jp2": "JPEG2000"}.get(kind[-4:], ""), BYTES_PER_PIXEL
    )
    max_pixels = width * height * cost // BYTES_PER_PIXEL  # their limit is max_pixels x 8 / cost
    record = peak_rss([path], max_pixels=max_pixels, limit_mb=BYTES_PER_PIXEL * max_pixels // MIB + 256)
    assert record["results"] == ["(3, 224, 224)"], record
    assert float(record["image_mb"]) * MIB <= BYTES_PER_PIXEL * max_pixels + 64 * MIB, record  # type: ignore[arg-type]


@pytest.mark.slow
def test_worst_case_at_the_default_max_pixels(tmp_path: Path) -> None:
    """An RGBA PNG of 178,944,129 pixels (just under the default --max-pixels): about 1.4 GB."""
    import numpy as np

    from imgclassify.decode.imaging import BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS

    side = 13_377
    row = (np.arange(side) % 251).astype(np.uint8)
    pixels = np.empty((side, side, 4), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2], pixels[..., 3] = row, row[:, None], 77, 200
    Image.fromarray(pixels, "RGBA").save(tmp_path / "max.png", compress_level=1)
    del pixels
    record = peak_rss([tmp_path / "max.png"], limit_mb=BYTES_PER_PIXEL * DEFAULT_MAX_PIXELS // MIB + 256)
    assert record["results"] == ["(3, 224, 224)"], record
    assert float(record["image_mb"]) * MIB <= BYTES_PER_PIXEL * DEFAULT_MAX_PIXELS + 64 * MIB, record  # type: ignore[arg-type]


# -- decoded size against the header, per-format limits ------------------------------------------


def test_decoded_size_checked_against_max_pixels(tmp_path: Path) -> None:
    from imgclassify.decode.imaging import open_image
    from imgclassify.errors import ImageError

    ico_lying_about_size(tmp_path / "lying.ico", Image.new("RGB", (1, 30_000)))
    with pytest.raises(ImageError, match=r"image too large: 1x30000 pixels"):  # the ICO says 16x16
        open_image(tmp_path / "lying.ico", DecodeOptions(max_pixels=10_000))
    assert open_image(tmp_path / "lying.ico").size == (1, 30_000)


def test_webp_limit_is_scaled_by_its_decoder_cost(tmp_path: Path) -> None:
    from imgclassify.decode.imaging import open_image
    from imgclassify.errors import ImageError

    Image.new("RGB", (200, 200)).save(tmp_path / "a.webp")
    Image.new("RGB", (200, 200)).save(tmp_path / "a.png")
    assert open_image(tmp_path / "a.png", DecodeOptions(max_pixels=50_000)).size == (200, 200)
    with pytest.raises(ImageError, match="more than --max-pixels 50000 allows for WEBP"):
        open_image(tmp_path / "a.webp", DecodeOptions(max_pixels=50_000))


def test_rotated_heic_is_rotated_once(lite0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """pillow-heif applies the orientation (and resets EXIF's to 1): exif_transpose must not again."""
    import numpy as np

    pillow_heif = pytest.importorskip("pillow_heif")
    from imgclassify.decode.imaging import open_image

    lab = labrador()
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = lab.transpose(Image.Transpose.ROTATE_90)
    pillow_heif.from_pillow(rotated).save(tmp_path / "rotated.heic", quality=95, exif=exif.tobytes())
    decoded = open_image(tmp_path / "rotated.heic")
    assert decoded.size == lab.size
    error = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(lab, dtype=np.int16)).mean()
    upside_down = np.abs(np.asarray(decoded.rotate(180), dtype=np.int16) - np.asarray(lab, dtype=np.int16)).mean()
    assert error < 6 < upside_down, (error, upside_down)
    assert lite0.predict_file(tmp_path / "rotated.heic").class_id == LAB


def test_heif_without_pillow_heif_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    pillow_heif = pytest.importorskip("pillow_heif")
    from imgclassify.decode.imaging import open_image
    from imgclassify.errors import ImageError

    pillow_heif.from_pillow(labrador()).save(tmp_path / "a.heic")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    with pytest.raises(
        ImageError, match=r"needs pillow-heif .*pipx inject imgclassify pillow-heif.*imgclassify\[heif\]"
    ):
        open_image(tmp_path / "a.heic")


# -- no process-wide side effects -----------------------------------------------------------------


def test_import_changes_nothing_process_wide() -> None:
    import subprocess
    import sys

    code = """
import warnings
from PIL import Image, ImageFile
before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, sorted(Image.OPEN), list(warnings.filters))
import imgclassify, imgclassify.decode.imaging, imgclassify.run.inputs
after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, sorted(Image.OPEN), list(warnings.filters))
assert before == after, (before, after)
print("unchanged")
"""
    env = {**os.environ, "PYTHONPATH": str(PEAK_RSS.parent.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.stdout.strip() == "unchanged", done.stderr


def test_decoding_leaves_pillow_globals_as_they_were(matrix) -> None:  # type: ignore[no-untyped-def]
    from PIL import ImageFile

    from imgclassify.decode.imaging import open_image
    from imgclassify.errors import ImageError

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, sorted(Image.OPEN))
    for name in ("photo.heic", "photo.avif", "bomb.png", "truncated.jpg"):
        if name in matrix:
            for allow in (False, True):
                with contextlib.suppress(ImageError):
                    open_image(matrix[name][0], DecodeOptions(allow_truncated=allow))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, sorted(Image.OPEN)) == before


def test_a_big_jpeg_over_pillows_own_limit_still_decodes_at_reduced_scale(tmp_path: Path) -> None:
    """Pillow refuses > 178,956,970 pixels at open; imgclassify opens past that without changing
    Pillow's global limit, and decodes at 1/8 scale (its own --max-pixels is what counts)."""
    from imgclassify.decode.imaging import open_image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (20_000, 10_000), (10, 200, 30)).save(path, quality=50)  # 200 Mpx, 300 KB
    assert open_image(path).size == (2_500, 1_250)


def test_allow_truncated_across_threads_restores_pillows_global(matrix) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from PIL import ImageFile

    from imgclassify.decode.imaging import open_image

    truncated = matrix["truncated.jpg"][0]
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda _: open_image(truncated, DecodeOptions(allow_truncated=True)).size, range(32)))
    assert sizes == [labrador().size] * 32
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_phone_formats_are_walked(tmp_path: Path) -> None:
    from imgclassify.run.inputs import expand_inputs

    for name in ("a.heic", "b.HEIF", "c.avif", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(os.path.basename(p) for p in expand_inputs([str(tmp_path)]).paths) == ["a.heic", "b.HEIF", "c.avif"]


def crash_like_a_decoder(how: str) -> None:
    """Kill this process with signal ``how``, as the OS or a crash in a C decoder would.

    Without faulthandler's dump: pytest enables faulthandler and a forked worker inherits it, so a
    SIGSEGV would print ``Fatal Python error: Segmentation fault`` and a traceback past pytest's
    capture into the run's output. The crash is on purpose: that dump is noise here.
    """
    import faulthandler
    import signal

    faulthandler.disable()
    os.kill(os.getpid(), getattr(signal, how))


def _crash_with_faulthandler_on(dump_fd: int) -> None:
    import faulthandler

    faulthandler.enable(file=dump_fd)  # as pytest does (onto its copy of stderr)
    crash_like_a_decoder("SIGSEGV")


def test_a_crash_on_purpose_prints_no_fatal_error_dump() -> None:
    import multiprocessing
    import signal

    read_fd, write_fd = os.pipe()
    process = multiprocessing.get_context("fork").Process(target=_crash_with_faulthandler_on, args=(write_fd,))
    process.start()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stream:
        dump = stream.read()  # to the end: the child's copy of the pipe closes when it dies
    process.join(60)
    assert process.exitcode == -signal.SIGSEGV
    assert dump.decode(errors="replace") == ""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSEGV"])
def test_a_decode_worker_that_dies_costs_only_its_file(  # type: ignore[no-untyped-def]
    lite0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Killed by the OS (out of memory) or crashed in a C decoder: the run goes on with new workers."""
    import imgclassify.decode.decoder as decoding  # where Decoder finds load_tensor

    real = decoding.load_tensor  # type: ignore[attr-defined]
    paths = []
    for i in range(24):
        path = tmp_path / f"img{i:02d}.jpg"
        shutil.copy(SAMPLES / ("labrador.jpg" if i % 2 else "dog.jpg"), path)
        paths.append(str(path))
    poison = paths[9]

    def deadly(source, config, options=None):  # type: ignore[no-untyped-def]
        if str(source) == poison:
            crash_like_a_decoder(how)
        return real(source, config, options)

    monkeypatch.setattr(decoding, "load_tensor", deadly)  # forked workers inherit it
    preds = list(lite0.predict(paths, batch_size=4, workers=2))
    assert [p.path for p in preds] == paths  # every input once, in order
    assert preds[9].error == f"the decoder crashed on this file (its process was killed by {how}" + (
        " (out of memory?))" if how == "SIGKILL" else ")"
    )
    others = [p for i, p in enumerate(preds) if i != 9]
    assert all(p.error is None and p.class_id == (LAB if i % 2 else 222) for i, p in enumerate(preds) if i != 9), others
