"""The resize on torch's uint8 kernels against Pillow's and torchvision's (benchmark, not a test).

    python benchmarks/resize_parity.py [--photos DIR ...] [--megapixels 12] [--repeat 5] [--skip-top1]

Corpora: the labelled photos (tests/data/imagenet-labelled, plus the ``<wnid>_<name>.JPEG``
files of any ``--photos`` folder, by name once), their ``--megapixels`` versions (Pillow LANCZOS
upscale, aspect kept: 4000x3000 for a 4:3 photo) and 4032x3024 camera frames (3024x4032 for
portrait photos; stretched to 4:3), saved as JPEG quality 92. Prints, for each corpus:

- pixel statistics of the model input (the uint8 crop) for bicubic (EfficientNet-Lite0's
  preprocessing) and bilinear (DenseNet-121's): imgclassify now against today's path (Pillow's
  resize: torch's kernels switched off) and against torchvision's reference transform
  (``Resize(resize, antialias=True)``, ``CenterCrop``, ``ToTensor``, ``Normalize`` on the PIL
  image, differences turned back into levels): max and mean absolute difference in levels, the
  share of values (pixel channels) and of pixels that differ;
- top-1 with the bundled EfficientNet-Lite0: exact decoding (``--exact-decode``; "exact" below
  is that mode throughout) with Pillow's resize (today), with torch's, and ``--fast-decode`` (reduced-scale JPEG decoding) with each; agreement with the
  exact path and accuracy against the labels;
- time per image on one core (``torch.set_num_threads(1)``): the resize of a decoded 12 MP photo
  to 256 (Pillow against torch), and the whole decode + preprocess (today's path against now).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "tests" / "data" / "imagenet-labelled"


@contextlib.contextmanager
def pillow_resize_only() -> Iterator[None]:
    """Today's path: torch's kernels never used (every resize is Pillow's)."""
    from imgclassify.decode import resize

    saved = resize.torch_resize_applies
    resize.torch_resize_applies = lambda *args, **kwargs: False  # type: ignore[assignment]
    try:
        yield
    finally:
        resize.torch_resize_applies = saved  # type: ignore[assignment]


def labelled_photos(extra: list[Path]) -> list[Path]:
    photos = {p.name: p for p in sorted(LABELLED.glob("*.JPEG"))}
    for folder in extra:
        for path in sorted(folder.glob("n*_*.JPEG")):
            photos.setdefault(path.name, path)
    return [photos[name] for name in sorted(photos)]


def scaled_corpus(
    photos: list[Path], folder: Path, size_of: Callable[[tuple[int, int]], tuple[int, int]]
) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in photos:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        target = folder / path.name
        rgb.resize(size_of(rgb.size), Image.Resampling.LANCZOS).save(target, format="JPEG", quality=92)
        out.append(target)
    return out


def reference_transform(config: Any) -> Callable[[Any], Any]:
    from torchvision import transforms

    mode = transforms.InterpolationMode(config.interpolation.value)
    return transforms.Compose(
        [
            transforms.Resize(config.resize_size, interpolation=mode, antialias=True),
            transforms.CenterCrop(config.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )


class Stats:
    """Absolute differences in levels, accumulated over images."""

    def __init__(self) -> None:
        self.max = 0.0
        self.total = 0.0
        self.values = self.differ = self.pixels = self.pixels_differ = self.over_one = 0

    def add(self, diff: Any) -> None:  # (3, H, W) float tensor of absolute level differences
        self.max = max(self.max, float(diff.max()))
        self.total += float(diff.sum())
        self.values += diff.numel()
        self.differ += int((diff > 0.5).sum())
        self.over_one += int((diff > 1.5).sum())
        self.pixels += diff[0].numel()
        self.pixels_differ += int((diff > 0.5).any(0).sum())

    def row(self) -> str:
        return (
            f"{self.max:.0f} | {self.total / self.values:.5f} | {100 * self.differ / self.values:.3f}% | "
            f"{100 * self.pixels_differ / self.pixels:.3f}% | {self.over_one}"
        )


def pixel_statistics(paths: list[Path], model: str) -> tuple[Stats, Stats, Stats, Stats]:
    """(now against Pillow's, now against torchvision's, Pillow's against torchvision's, and
    --fast-decode now against --fast-decode with Pillow's resize) in levels."""
    import torch
    from PIL import Image, ImageOps

    from imgclassify.decode.imaging import DecodeMode, DecodeOptions, load_tensor
    from imgclassify.models.registry import get_spec

    config = get_spec(model).preprocess
    exact, fast = DecodeOptions(DecodeMode.EXACT), DecodeOptions(DecodeMode.FAST)
    reference = reference_transform(config)
    std = torch.tensor(config.std).view(3, 1, 1)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    vs_pillow, vs_torchvision, pillow_vs_torchvision, fast_vs_pillow = Stats(), Stats(), Stats(), Stats()
    for path in paths:
        now, now_fast = load_tensor(path, config, exact), load_tensor(path, config, fast)
        with pillow_resize_only():
            today, today_fast = load_tensor(path, config, exact), load_tensor(path, config, fast)
        fast_vs_pillow.add((now_fast.float() - today_fast.float()).abs())
        with Image.open(path) as image:
            expected = reference(ImageOps.exif_transpose(image).convert("RGB"))
        levels = (expected * std + mean) * 255  # torchvision's normalized pixels back in levels
        vs_pillow.add((now.float() - today.float()).abs())
        vs_torchvision.add((now.float() - levels).abs().round())
        pillow_vs_torchvision.add((today.float() - levels).abs().round())
    return vs_pillow, vs_torchvision, pillow_vs_torchvision, fast_vs_pillow


def top1_table(paths: list[Path]) -> list[str]:
    from imgclassify import load_classifier
    from imgclassify.decode.imaging import DecodeMode, DecodeOptions
    from imgclassify.models.labels import imagenet_labels

    index_of = {label.wnid: i for i, label in enumerate(imagenet_labels())}
    truth = {p.name: index_of[p.name.split("_")[0]] for p in paths}

    def top1(fast: bool) -> dict[str, int]:
        mode = DecodeMode.FAST if fast else DecodeMode.EXACT
        clf = load_classifier("efficientnet_lite0", device="cpu", decode=DecodeOptions(mode))
        return {Path(p.path).name: p.class_id for p in clf.predict(paths, batch_size=8, workers=0)}

    with pillow_resize_only():
        exact_pillow, fast_pillow = top1(False), top1(True)
    exact, fast = top1(False), top1(True)
    rows = []
    for name, got in (
        ("exact, Pillow's resize (today)", exact_pillow),
        ("exact, torch's resize (now)", exact),
        ("--fast-decode, Pillow's resize (today)", fast_pillow),
        ("--fast-decode, torch's resize (now)", fast),
    ):
        same_today = sum(got[n] == exact_pillow[n] for n in truth)
        same_now = sum(got[n] == exact[n] for n in truth)
        correct = sum(got[n] == truth[n] for n in truth)
        rows.append(f"| {name} | {same_today}/{len(truth)} | {same_now}/{len(truth)} | {correct}/{len(truth)} |")
    return rows


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def timings(paths: list[Path], repeat: int) -> list[str]:
    """Per image, one core: resize only (Pillow, torch) and decode + preprocess (today, now)."""
    import torch
    from PIL import Image

    from imgclassify.decode import imaging, resize
    from imgclassify.decode.imaging import DecodeMode, DecodeOptions, load_tensor
    from imgclassify.models.registry import get_spec

    torch.set_num_threads(1)
    exact, fast = DecodeOptions(DecodeMode.EXACT), DecodeOptions(DecodeMode.FAST)
    rows = []
    for model in ("efficientnet_lite0", "densenet121"):
        config = get_spec(model).preprocess
        mode = config.interpolation
        resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[mode.value]
        pillow_resize, torch_resize, today, now, today_fast, now_fast = [], [], [], [], [], []
        for path in paths:
            image, _ = imaging._open(path, exact, config.resize_size, config)  # one block: what torch reads
            pixels = resize.pixel_view(image)
            assert pixels is not None, "a 12 MP RGB JPEG should decode into one block"
            size = imaging._shorter_side_resized(image.size, config)
            pillow_resize.append(median_ms(partial(image.resize, size, resample), repeat))
            torch_resize.append(median_ms(partial(resize.resize, pixels, size, mode), repeat))
            now.append(median_ms(partial(load_tensor, path, config, exact), repeat))
            now_fast.append(median_ms(partial(load_tensor, path, config, fast), repeat))
            with pillow_resize_only():
                today.append(median_ms(partial(load_tensor, path, config, exact), repeat))
                today_fast.append(median_ms(partial(load_tensor, path, config, fast), repeat))

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):.1f}"

        rows.append(
            f"| {model} ({mode.value}) | {cell(pillow_resize)} | {cell(torch_resize)} | "
            f"{statistics.median(pillow_resize) / statistics.median(torch_resize):.1f}x | "
            f"{cell(today)} | {cell(now)} | {cell(today_fast)} | {cell(now_fast)} |"
        )
    return rows


def sweep(photo: Path, repeat: int) -> list[str]:
    """Resize time by shorter side (one core): where torch's kernels pay (resize.TORCH_FACTOR)."""
    import torch
    from PIL import Image

    from imgclassify.decode import resize
    from imgclassify.decode.preprocess import Interpolation

    torch.set_num_threads(1)
    core: Any = Image.core  # type: ignore[attr-defined]
    rows = []
    with Image.open(photo) as image:
        source = image.convert("RGB")
    for short in (384, 512, 768, 1024, 1536, 2048, 3024):
        core.set_use_block_allocator(1)  # one block, as a decoded large JPEG (benchmark only)
        try:
            big = source.resize((short * 4 // 3, short), Image.Resampling.LANCZOS)
        finally:
            core.set_use_block_allocator(0)
        pixels = resize.pixel_view(big)
        assert pixels is not None
        size = (256 * 4 // 3, 256)
        cells = []
        for mode in (Interpolation.BICUBIC, Interpolation.BILINEAR):
            resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[mode.value]
            pillow = median_ms(partial(big.resize, size, resample), repeat)
            fast = median_ms(partial(resize.resize, pixels, size, mode), repeat)
            cells.append(f"{pillow:.1f} | {fast:.1f}")
        rows.append(f"| {short * 4 // 3}x{short} | {short / 256:.1f} | " + " | ".join(cells) + " |")
        del pixels, big
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, action="append", default=[], help="more labelled photos")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats per image (median)")
    parser.add_argument("--timing-images", type=int, default=10, help="12 MP photos timed")
    parser.add_argument("--skip-top1", action="store_true")
    args = parser.parse_args()
    from imgclassify.system.capabilities import cpu_description
    from imgclassify.system.runtime import tune_allocator

    tune_allocator()  # as predict and serve run
    photos = labelled_photos(args.photos)
    print(f"# resize parity: {len(photos)} labelled photos, {cpu_description()}")
    area = args.megapixels * 1e6

    def megapixels(size: tuple[int, int]) -> tuple[int, int]:
        scale = (area / (size[0] * size[1])) ** 0.5
        return round(size[0] * scale), round(size[1] * scale)

    def camera(size: tuple[int, int]) -> tuple[int, int]:
        return (4032, 3024) if size[0] >= size[1] else (3024, 4032)

    with tempfile.TemporaryDirectory() as tmp:
        corpora = {
            "labelled photos (as they are)": photos,
            f"{args.megapixels:g} MP (upscaled, aspect kept)": scaled_corpus(photos, Path(tmp) / "mp", megapixels),
            "4032x3024 camera frames": scaled_corpus(photos, Path(tmp) / "camera", camera),
        }
        print("\n## Pixels of the model input, in levels (0-255)\n")
        print("| corpus | resize | against | max | mean | values differing | pixels differing | values > 1 apart |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for corpus, paths in corpora.items():
            for model in ("efficientnet_lite0", "densenet121"):
                from imgclassify.models.registry import get_spec

                mode = get_spec(model).preprocess.interpolation.value
                vs_pillow, vs_tv, pillow_vs_tv, fast_vs_pillow = pixel_statistics(paths, model)
                print(f"| {corpus} | {mode} | now vs Pillow (today) | {vs_pillow.row()} |", flush=True)
                print(f"| {corpus} | {mode} | now vs torchvision | {vs_tv.row()} |", flush=True)
                print(f"| {corpus} | {mode} | today vs torchvision | {pillow_vs_tv.row()} |", flush=True)
                print(f"| {corpus} | {mode} | --fast-decode: now vs today | {fast_vs_pillow.row()} |", flush=True)
        if not args.skip_top1:
            print("\n## Top-1, EfficientNet-Lite0\n")
            for corpus, paths in corpora.items():
                print(f"\n{corpus}:\n")
                print("| decoding | same as exact today | same as exact now | correct |")
                print("| --- | --- | --- | --- |")
                print("\n".join(top1_table(paths)), flush=True)
        timed = corpora["4032x3024 camera frames"][: args.timing_images]
        print(f"\n## Per image, one core, ms (median over {len(timed)} 4032x3024 photos, {args.repeat} runs each)\n")
        print(
            "| model | resize Pillow | resize torch | speed-up | decode+preprocess today | now | "
            "--fast-decode today | now |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(timings(timed, args.repeat)), flush=True)
        print("\n## Resize to 256 by size, one core, ms (median of --repeat)\n")
        print("| size | x 256 | bicubic Pillow | torch | bilinear Pillow | torch |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(sweep(photos[0], args.repeat)), flush=True)


if __name__ == "__main__":
    main()
