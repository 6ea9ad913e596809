"""Camera-sized JPEGs (benchmark, not a test): the decode modes against exact decoding
(``--exact-decode``): reduced-scale (the default) and ``--fast-decode``.

    python benchmarks/camera_decode.py [--scale 3.5] [--quality 90]

Makes camera-sized photos by upscaling the 50 labelled ImageNet photos (and the sample photos)
``--scale`` times and saving them as JPEG quality ``--quality``; then, with EfficientNet-Lite0:
decode + preprocess time per image for each mode (one core), top-1 agreement with the exact mode,
and the drift of the exact top-1 class's probability. Prints the CPU it ran on. Accuracy against
the labels: benchmarks/decode_accuracy.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "data" / "imagenet-labelled").glob("*.JPEG")) + sorted(
    (ROOT / "samples").glob("*.jpg")
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=3.5)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    import torch
    from PIL import Image

    from imgclassify import load_classifier
    from imgclassify.decode.imaging import DecodeMode, DecodeOptions
    from imgclassify.decode.loading import Decoder
    from imgclassify.system.capabilities import cpu_description

    print(f"# camera decode: {len(PHOTOS)} photos x{args.scale}, JPEG q{args.quality}, {cpu_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        big = []
        for path in PHOTOS:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            size = (round(rgb.width * args.scale), round(rgb.height * args.scale))
            target = Path(tmp) / f"{path.stem}.jpg"
            rgb.resize(size, Image.Resampling.BICUBIC).save(target, format="JPEG", quality=args.quality)
            big.append(target)
        sizes = [Image.open(p).size for p in big]
        megapixels = statistics.median(w * h / 1e6 for w, h in sizes)
        print(f"median size {megapixels:.1f} MP")
        clf = load_classifier("efficientnet_lite0", device="cpu")
        results = {}
        for mode in DecodeMode:
            name = mode.value
            decoder = Decoder(clf.preprocess_config, DecodeOptions(mode))
            start = time.perf_counter()
            tensors = [decoder(str(p)) for p in big]
            ms = (time.perf_counter() - start) * 1000 / len(big)
            with torch.inference_mode():
                probs = torch.cat([clf.forward_uint8(torch.stack(tensors[i : i + 8])) for i in range(0, len(big), 8)])
            results[name] = probs
            print(f"{name}: decode + preprocess {ms:.1f} ms per image (one core)")
        exact = results["exact"]
        top_exact = exact.argmax(1)
        for name in ("reduced", "fast"):
            other = results[name]
            agree = int((top_exact == other.argmax(1)).sum())
            drift = (exact.gather(1, top_exact[:, None]) - other.gather(1, top_exact[:, None])).abs().squeeze(1)
            total_variation = 0.5 * (exact - other).abs().sum(1)
            print(f"{name}: top-1 agreement with exact: {agree}/{len(big)} ({100 * agree / len(big):.1f}%)")
            print(f"{name}: drift of the exact top-1 probability: median {drift.median():.4f}, max {drift.max():.4f}")
            print(f"{name}: total variation between the distributions: median {total_variation.median():.4f}, "
                  f"max {total_variation.max():.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
