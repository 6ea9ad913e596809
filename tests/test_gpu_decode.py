"""The GPU decoding path, run on the CPU: fallback policy, per-file fallback, batch assembly,
EXIF orientation and the resize/crop arithmetic against the CPU path (Pillow).

torchvision's ``decode_jpeg`` on the CPU (libjpeg) stands in for nvJPEG: everything else is the
code that runs on a GPU. No test here needs one.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.functional import pil_to_tensor
from typer.testing import CliRunner

from conftest import LABELLED, SAMPLES
from imgclassify.decode.decoder import Decoder
from imgclassify.decode.gpu import (
    GpuBatchDecoder,
    JpegHeader,
    chunks_by_pixels,
    gpu_decoding_available,
    iter_gpu_batches,
    needs_cpu_decode,
    nvjpeg_decode,
    orient,
    prefetch,
    read_header,
    resize_crop,
)
from imgclassify.decode.imaging import DecodeMode, DecodeOptions, open_image
from imgclassify.decode.loaders import LoaderKind, choose_loader, pin_memory_for
from imgclassify.models.registry import get_spec

CPU = torch.device("cpu")
BILINEAR = get_spec("densenet121").preprocess  # resize 256, crop 224, bilinear
BICUBIC = get_spec("efficientnet_lite0").preprocess  # resize 256, crop 224, bicubic
#: --exact-decode: JPEGs of at least twice the resize size (kitten.jpg, 720x720) go to nvJPEG too
EXACT = DecodeOptions(DecodeMode.EXACT)


def jpeg_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def kitten() -> Image.Image:
    return Image.open(SAMPLES / "kitten.jpg").convert("RGB")


def labrador() -> Image.Image:
    return Image.open(SAMPLES / "labrador.jpg").convert("RGB")


def policy(data: bytes, options: DecodeOptions | None = None) -> str | None:
    return needs_cpu_decode(read_header(data), BILINEAR, options or DecodeOptions())


def odd_sampling(data: bytes) -> bytes:
    """The first component's sampling factors in the SOF0 header set to 4x1 (4:1:1)."""
    sof = data.index(b"\xff\xc0")
    patched = bytearray(data)
    patched[sof + 11] = 0x41
    return bytes(patched)


# -- the fallback policy ----------------------------------------------------------------------


def test_plain_jpegs_go_to_nvjpeg() -> None:
    assert policy((SAMPLES / "labrador.jpg").read_bytes()) is None  # 500x546: under twice the resize size
    assert policy((SAMPLES / "kitten.jpg").read_bytes(), EXACT) is None
    assert policy(jpeg_bytes(kitten().convert("L")), EXACT) is None
    for sampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
        assert policy(jpeg_bytes(kitten(), subsampling=sampling), EXACT) is None
        assert policy(jpeg_bytes(labrador(), subsampling=sampling)) is None


def test_fallback_reasons() -> None:
    png = io.BytesIO()
    kitten().save(png, format="PNG")
    good = jpeg_bytes(kitten())
    assert policy(png.getvalue()) == "not a JPEG (PNG)"
    assert policy(jpeg_bytes(kitten().convert("CMYK"))) == "CMYK JPEG"
    assert policy(b"\x00garbage, not an image" * 10) == "unreadable header"
    assert policy(good[: len(good) // 2]) == "no end-of-image marker (truncated?)"
    assert policy(jpeg_bytes(kitten(), progressive=True)) == "progressive JPEG"
    assert policy(odd_sampling(good)) == "chroma sampling other than 4:4:4, 4:2:2 or 4:2:0"


def test_huge_and_big_jpegs_go_to_reduced_scale_cpu_decoding() -> None:
    """As on the CPU path: JPEGs of at least twice the resize size are decoded at reduced scale
    (on the CPU) unless --exact-decode, and huge ones always."""
    big = jpeg_bytes(Image.new("RGB", (1200, 800), (10, 120, 200)))  # 960,000 pixels; short side 800 >= 2 * 256
    assert read_header(big) == JpegHeader("JPEG", "RGB", 1200, 800, sampling=2)
    assert policy(big, EXACT) is None
    assert policy(big) == "reduced-scale decoding (--exact-decode: nvJPEG)"
    for options in (DecodeOptions(max_pixels=900_000), DecodeOptions(DecodeMode.EXACT, max_pixels=900_000)):
        assert policy(big, options) == "more pixels than --max-pixels: reduced-scale decoding"
    assert policy(big, DecodeOptions(DecodeMode.FAST)) == "--fast-decode: reduced-scale decoding"
    small = jpeg_bytes(Image.new("RGB", (600, 400)))  # short side under 2 * 256: no reduced scale on the CPU either
    for mode in DecodeMode:
        assert policy(small, DecodeOptions(mode)) is None


def test_big_jpegs_get_the_cpu_paths_pixels_by_default() -> None:
    """kitten.jpg (720x720) by default: the CPU decoder's reduced-scale pixels exactly, not nvJPEG's full decode."""
    data = (SAMPLES / "kitten.jpg").read_bytes()
    cpu = Decoder(BILINEAR)
    gpu = GpuBatchDecoder(cpu, CPU)
    tensor, errors = gpu([("kitten.jpg", data)])
    assert errors == {} and tensor is not None and torch.equal(tensor[0], cpu(data))
    assert gpu.fallbacks == {"reduced-scale decoding (--exact-decode: nvJPEG)": 1}
    assert not torch.equal(cpu(data), Decoder(BILINEAR, EXACT)(data))  # reduced scale did change the pixels


def test_header_reads_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    assert read_header(jpeg_bytes(kitten(), exif=exif)).orientation == 6
    assert read_header(jpeg_bytes(kitten())).orientation == 1


# -- tensor math --------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_equals_pillow_exif_transpose(orientation: int) -> None:
    image = labrador().resize((60, 40))  # not square: every rotation shows
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = Image.open(io.BytesIO(jpeg_bytes(image, exif=exif)))
    raw = pil_to_tensor(tagged.convert("RGB"))
    expected = pil_to_tensor(ImageOps.exif_transpose(tagged).convert("RGB"))
    assert torch.equal(orient(raw, orientation), expected)


@pytest.mark.slow
@pytest.mark.parametrize(("config", "max_diff"), [(BILINEAR, 2), (BICUBIC, 1)])
def test_resize_crop_matches_the_cpu_path_on_the_labelled_photos(config, max_diff) -> None:  # type: ignore[no-untyped-def]
    """The same decoded pixels through both resizes: at most ``max_diff`` levels apart, almost always equal."""
    decoder = Decoder(config)
    worst, differing, total = 0, 0, 0
    for path in sorted(LABELLED.iterdir()):
        full = pil_to_tensor(open_image(path, short_side=config.resize_size))
        ours, theirs = resize_crop(full, config).int(), decoder(path).int()
        assert ours.shape == theirs.shape == (3, 224, 224)
        diff = (ours - theirs).abs()
        worst = max(worst, int(diff.max()))
        differing += int((diff > 0).sum())
        total += diff.numel()
    assert worst <= max_diff
    assert differing / total < 0.01  # measured: 0.342% (bilinear), 0.010% (bicubic)


def test_resize_crop_sizes_follow_torchvision() -> None:
    wide = torch.zeros(3, 300, 500, dtype=torch.uint8)
    tall = torch.zeros(3, 517, 300, dtype=torch.uint8)
    tiny = torch.full((3, 10, 20), 7, dtype=torch.uint8)
    assert resize_crop(wide, BILINEAR).shape == resize_crop(tall, BICUBIC).shape == (3, 224, 224)
    assert resize_crop(tiny, BILINEAR).shape == (3, 224, 224)
    assert torch.equal(resize_crop(tiny, BILINEAR), Decoder(BILINEAR)(jpeg_bytes(Image.new("RGB", (20, 10), (7,) * 3))))


def test_chunks_by_pixels_keeps_order_and_budget() -> None:
    assert chunks_by_pixels([5, 5, 5, 20, 1], budget=10) == [[0, 1], [2], [3], [4]]
    assert chunks_by_pixels([], budget=10) == []


# -- the decoder: per-file fallback, order, batch assembly ---------------------------------------


def mixed_batch(tmp_path: Path) -> list[tuple[str, bytes | None]]:
    png = io.BytesIO()
    labrador().save(png, format="PNG")
    good = (SAMPLES / "kitten.jpg").read_bytes()
    return [
        ("kitten.jpg", good),
        ("labrador.png", png.getvalue()),
        ("corrupt.jpg", b"\xff\xd8\xff" + b"\x00" * 100),
        ("truncated.jpg", good[: len(good) // 2]),
        (str(tmp_path / "missing.jpg"), None),
        ("cmyk.jpg", jpeg_bytes(labrador().convert("CMYK"))),
        ("dog.jpg", (SAMPLES / "dog.jpg").read_bytes()),
    ]


def test_per_file_fallback_keeps_order_and_other_results(tmp_path: Path) -> None:
    items = mixed_batch(tmp_path)
    cpu = Decoder(BILINEAR, EXACT)
    gpu = GpuBatchDecoder(cpu, CPU)
    tensor, errors = gpu(items)
    assert errors == {2: "not an image, or a format Pillow cannot read", 3: "truncated image file",
                      4: "file not found"}  # fmt: skip
    assert tensor is not None and tensor.shape == (4, 3, 224, 224) and tensor.dtype == torch.uint8
    expected = [cpu(data) for _, data in (items[0], items[1], items[5], items[6])]  # type: ignore[arg-type]
    for row, want in zip(tensor, expected, strict=True):
        assert int((row.int() - want.int()).abs().max()) <= 2
    assert torch.equal(tensor[1], expected[1]) and torch.equal(tensor[2], expected[2])  # decoded on the CPU: exact
    assert gpu.fallbacks == {"not a JPEG (PNG)": 1, "unreadable header": 1, "no end-of-image marker (truncated?)": 1,
                             "unreadable file": 1, "CMYK JPEG": 1}  # fmt: skip


def test_a_file_nvjpeg_refuses_falls_back_alone() -> None:
    """The batched call fails as a whole; each file is retried alone and only the culprit goes to the CPU."""
    datas = [(SAMPLES / name).read_bytes() for name in ("kitten.jpg", "dog.jpg", "labrador.jpg")]
    refused = datas[1]
    calls: list[int] = []

    def flaky(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(tensors))
        if any(bytes(t.numpy()) == refused for t in tensors):
            raise RuntimeError("nvjpegDecodeBatched failed")
        return nvjpeg_decode(tensors, device)

    cpu = Decoder(BILINEAR, EXACT)
    gpu = GpuBatchDecoder(cpu, CPU, decode_jpeg=flaky)
    tensor, errors = gpu([("a", datas[0]), ("b", datas[1]), ("c", datas[2])])
    assert errors == {} and tensor is not None and len(tensor) == 3
    assert calls == [3, 1, 1, 1]
    assert gpu.fallbacks == {"nvJPEG failed": 1}
    assert torch.equal(tensor[1], cpu(datas[1]))
    for row, data in zip(tensor, datas, strict=True):
        assert int((row.int() - cpu(data).int()).abs().max()) <= 2


def test_pixel_budget_splits_the_nvjpeg_calls() -> None:
    datas = [(SAMPLES / name).read_bytes() for name in ("kitten.jpg", "dog.jpg", "labrador.jpg")]
    calls: list[int] = []

    def counting(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(tensors))
        return nvjpeg_decode(tensors, device)

    gpu = GpuBatchDecoder(Decoder(BILINEAR, EXACT), CPU, decode_jpeg=counting, pixel_budget=1)
    tensor, _ = gpu([(str(i), d) for i, d in enumerate(datas)])
    assert calls == [1, 1, 1] and tensor is not None and len(tensor) == 3


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_on_the_gpu_path_equals_the_cpu_path(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg_bytes(labrador().resize((400, 300)), exif=exif, quality=95)
    cpu = Decoder(BILINEAR)
    tensor, errors = GpuBatchDecoder(cpu, CPU)([("x.jpg", data)])
    assert errors == {} and tensor is not None
    assert int((tensor[0].int() - cpu(data).int()).abs().max()) <= 2
    unrotated = cpu(jpeg_bytes(labrador().resize((400, 300)), quality=95))
    assert int((tensor[0].int() - unrotated.int()).abs().max()) > 50  # the rotation did happen


def test_iter_gpu_batches_assembles_batches_in_input_order(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    paths = [str(SAMPLES / "kitten.jpg"), str(tmp_path / "empty.jpg"), str(SAMPLES / "dog.jpg"),
             str(tmp_path / "missing.jpg"), str(SAMPLES / "labrador.jpg")]  # fmt: skip
    gpu = GpuBatchDecoder(Decoder(BILINEAR), CPU)
    batches = list(iter_gpu_batches(paths, gpu, batch_size=2, workers=0))
    assert [b.indices for b in batches] == [[0, 1], [2, 3], [4]]
    assert [b.errors for b in batches] == [{1: "empty file"}, {3: "file not found"}, {}]
    assert [None if b.tensor is None else tuple(b.tensor.shape) for b in batches] == [(1, 3, 224, 224)] * 3
    assert [b.good_indices for b in batches] == [[0], [2], [4]]


@pytest.mark.slow
def test_gpu_code_path_top1_agrees_with_the_cpu_path_on_the_labelled_photos(lite0) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(str(p) for p in LABELLED.iterdir())
    gpu = GpuBatchDecoder(lite0.decoder, CPU)
    ours: list[int] = []
    for batch in iter_gpu_batches(paths, gpu, batch_size=10, workers=0):
        assert batch.errors == {}
        ours += lite0.forward_uint8(batch.tensor).argmax(dim=1).tolist()
    theirs = [p.class_id for p in lite0.predict(paths, batch_size=10, workers=0)]
    assert len(ours) == 50 and ours == theirs  # measured: 50/50


# -- loader choice, pinning, prefetch ---------------------------------------------------------


def test_loader_choice_and_pinning() -> None:
    probed: list[torch.device] = []

    def works(device: torch.device) -> bool:
        probed.append(device)
        return True

    cuda = torch.device("cuda")
    assert choose_loader(CPU, nvjpeg_works=works, environ={}) is LoaderKind.CPU_DECODE
    assert probed == []  # never probed off CUDA
    assert choose_loader(cuda, nvjpeg_works=works, environ={}) is LoaderKind.GPU_DECODE
    assert choose_loader(cuda, nvjpeg_works=lambda d: False, environ={}) is LoaderKind.CPU_DECODE
    assert choose_loader(cuda, nvjpeg_works=works, environ={"IMGCLASSIFY_GPU_DECODE": "0"}) is LoaderKind.CPU_DECODE
    assert pin_memory_for(cuda) and not pin_memory_for(CPU) and not pin_memory_for(torch.device("mps"))
    assert gpu_decoding_available(CPU) is False


def test_prefetch_keeps_order_raises_in_order_and_stops() -> None:
    assert list(prefetch(iter(range(20)), depth=2)) == list(range(20))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    seen: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        for item in prefetch(failing()):
            seen.append(item)
    assert seen == [1]
    produced: list[int] = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    stream = prefetch(endless(), depth=1)
    assert next(stream) == 0
    stream.close()  # type: ignore[attr-defined]
    assert threading.active_count() == before and len(produced) <= 3


# -- --device cuda without CUDA ---------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_fails_before_the_model_is_planned(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgclassify.cli import app
    from imgclassify.run import runner as runner_module

    def no_planning(*args: object, **kwargs: object) -> None:
        raise AssertionError("plan_model was called")

    monkeypatch.setattr(runner_module, "plan_model", no_planning)
    result = runner.invoke(app, ["predict", str(SAMPLES / "kitten.jpg"), "-m", "densenet121", "--device", "cuda"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "imgclassify: error: device 'cuda' requested but CUDA is not available here: use --device cpu (or auto)"
    )
