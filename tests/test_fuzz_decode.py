"""Fuzzing the loader: random and mutated image bytes either give a correctly shaped tensor or
the project's own ImageError; no other exception, no hang."""

from __future__ import annotations

import io

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import SAMPLES
from imgclassify.decode.imaging import DecodeOptions, load_tensor
from imgclassify.errors import ImageError
from imgclassify.models.registry import get_spec

CONFIG = get_spec("efficientnet_lite0").preprocess


def _seeds() -> list[bytes]:
    with Image.open(SAMPLES / "kitten_small.jpg") as src:
        small = src.convert("RGB").resize((48, 36))
    seeds = []
    for fmt, kwargs in [("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {})]:
        buffer = io.BytesIO()
        small.save(buffer, format=fmt, **kwargs)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def check(data: bytes, options: DecodeOptions) -> None:
    try:
        tensor = load_tensor(io.BytesIO(data), CONFIG, options)
    except ImageError as exc:
        assert str(exc)
        return
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, CONFIG.crop_size, CONFIG.crop_size)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.binary(max_size=4096)), st.booleans())
def test_loader_returns_tensor_or_image_error(data: bytes, allow_truncated: bool) -> None:
    check(data, DecodeOptions(allow_truncated=allow_truncated, max_pixels=50_000_000))
