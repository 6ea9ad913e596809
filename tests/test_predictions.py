"""Real predictions with the real EfficientNet-Lite0 weights, on real photos.

Facts from tests/data/README.md (first measured on ../shared). The labelled-set threshold (>= 42/50) catches wrong
preprocessing: with ImageNet mean/std instead of the model's own, only 39 are right.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import LABELLED, SAMPLES
from imgclassify.models.labels import imagenet_labels


def test_samples_known_classes(lite0) -> None:  # type: ignore[no-untyped-def]
    names = ["kitten.jpg", "kitten_small.jpg", "labrador.jpg", "brittany.jpg", "dog.jpg"]
    got = {Path(p.path).name: p for p in lite0.predict([SAMPLES / n for n in names], top_k=3)}
    assert 281 <= got["kitten.jpg"].class_id <= 285
    # 720x720, at least twice the resize size: decoded at reduced scale (0.56 with --exact-decode)
    assert got["kitten.jpg"].class_id == 282 and got["kitten.jpg"].probability == pytest.approx(0.59, abs=0.02)
    assert got["kitten_small.jpg"].class_id == 281
    assert got["labrador.jpg"].class_id == 208 and got["labrador.jpg"].class_name == "Labrador_retriever"
    assert got["labrador.jpg"].wnid == "n02099712"
    assert got["labrador.jpg"].probability == pytest.approx(0.93, abs=0.02)
    assert got["brittany.jpg"].class_id == 215 and got["brittany.jpg"].probability == pytest.approx(0.94, abs=0.02)
    assert got["dog.jpg"].class_id == 222
    kitten_top = [c.class_id for c in got["kitten.jpg"].top]
    assert kitten_top[:2] == [282, 281] and len(kitten_top) == 3
    probs = [c.probability for c in got["kitten.jpg"].top]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0


def test_labelled_imagenet_accuracy(lite0) -> None:  # type: ignore[no-untyped-def]
    files = sorted(LABELLED.glob("*.JPEG"))
    assert len(files) == 50
    index_of = {label.wnid: i for i, label in enumerate(imagenet_labels())}
    correct = top5 = 0
    for pred in lite0.predict(files, batch_size=8, top_k=5):
        truth = index_of[Path(pred.path).name.split("_")[0]]
        correct += pred.class_id == truth
        top5 += truth in [c.class_id for c in pred.top]
    assert correct >= 42, f"top-1 {correct}/50: preprocessing is wrong"
    assert top5 >= 47


@pytest.mark.parametrize(
    ("name", "mode", "expected"),
    [("gray.png", "L", 208), ("palette.png", "P", 208), ("cmyk.jpg", "CMYK", 208), ("la.png", "LA", 208)],
)
def test_image_modes_are_classified(lite0, make_image, name: str, mode: str, expected: int) -> None:  # type: ignore[no-untyped-def]
    path = make_image(name, mode=mode)
    assert Image.open(path).mode == mode
    pred = lite0.predict_file(path)
    assert pred.error is None and pred.class_id == expected


def test_rgba_opaque_equals_rgb_and_transparency_goes_on_white(lite0, make_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rgb = make_image("rgb.png")
    rgba = make_image("rgba.png", mode="RGBA")
    a, b = lite0.predict_file(rgb, top_k=5), lite0.predict_file(rgba, top_k=5)
    assert [c.class_id for c in a.top] == [c.class_id for c in b.top]
    assert [c.probability for c in a.top] == pytest.approx([c.probability for c in b.top], abs=1e-6)
    # a fully transparent image is a white image, not black
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    white = Image.new("RGB", (300, 300), (255, 255, 255))
    clear.save(tmp_path / "clear.png")
    white.save(tmp_path / "white.png")
    c, w = lite0.predict_file(tmp_path / "clear.png"), lite0.predict_file(tmp_path / "white.png")
    assert c.class_id == w.class_id and c.probability == pytest.approx(w.probability, abs=1e-6)


def test_sixteen_bit_grayscale_matches_eight_bit(lite0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    gray = Image.open(SAMPLES / "labrador.jpg").convert("L")
    gray.save(tmp_path / "g8.png")
    Image.fromarray(np.asarray(gray).astype("uint16") * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a, b = lite0.predict_file(tmp_path / "g8.png"), lite0.predict_file(tmp_path / "g16.png")
    assert a.class_id == b.class_id == 208
    assert a.probability == pytest.approx(b.probability, abs=1e-4)


def test_exif_orientation_is_applied(lite0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upright = Image.open(SAMPLES / "labrador.jpg").convert("RGB")
    upright.save(tmp_path / "upright.png")
    # stored rotated 90 degrees counter-clockwise; orientation 6 says "turn 90 clockwise to view"
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "tagged.png", exif=exif)
    stored.save(tmp_path / "untagged.png")
    ref = lite0.predict_file(tmp_path / "upright.png")
    tagged = lite0.predict_file(tmp_path / "tagged.png")
    untagged = lite0.predict_file(tmp_path / "untagged.png")
    assert tagged.class_id == ref.class_id == 208
    assert tagged.probability == pytest.approx(ref.probability, abs=1e-5)
    assert abs(untagged.probability - ref.probability) > 1e-3  # the tag made the difference


def test_bad_files_become_error_records(lite0, bad_files) -> None:  # type: ignore[no-untyped-def]
    paths = [SAMPLES / "kitten.jpg", *bad_files.values(), Path("/nonexistent/file.jpg")]
    preds = list(lite0.predict(paths, batch_size=4, workers=0))
    assert [p.path for p in preds] == [str(p) for p in paths]
    assert preds[0].ok and 281 <= preds[0].class_id <= 285
    reasons = {Path(p.path).stem: p.error for p in preds[1:]}
    assert reasons["corrupt"] == "not an image, or a format Pillow cannot read"
    assert reasons["truncated"] == "truncated image file"
    assert reasons["empty"] == "empty file"
    assert reasons["notes"] == "not an image, or a format Pillow cannot read"
    assert reasons["file"] == "file not found"
    for p in preds[1:]:
        assert p.class_id is None and p.class_name is None and p.probability is None and p.top == ()


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_invariance_with_a_corrupt_file_in_the_middle(lite0, bad_files, workers: int) -> None:  # type: ignore[no-untyped-def]
    photos = sorted(SAMPLES.glob("*.jpg")) + sorted(LABELLED.glob("*.JPEG"))[:6]
    paths = [*photos[:5], bad_files["corrupt"], *photos[5:]]
    runs = {bs: list(lite0.predict(paths, batch_size=bs, top_k=3, workers=workers)) for bs in (1, 3, 32)}
    base = runs[1]
    assert base[5].error is not None and all(p.ok for i, p in enumerate(base) if i != 5)
    for bs, preds in runs.items():
        assert [p.path for p in preds] == [str(p) for p in paths], bs
        for a, b in zip(base, preds, strict=True):
            assert a.error == b.error
            assert [c.class_id for c in a.top] == [c.class_id for c in b.top], (bs, a.path)
            assert [c.probability for c in a.top] == pytest.approx([c.probability for c in b.top], abs=1e-4)


def test_in_memory_images_match_files(lite0) -> None:  # type: ignore[no-untyped-def]
    path = SAMPLES / "brittany.jpg"
    from_file = lite0.predict_file(path, top_k=2)
    with open(path, "rb") as stream:
        from_stream = lite0.predict_file(stream, top_k=2)
    assert from_file.top == from_stream.top
