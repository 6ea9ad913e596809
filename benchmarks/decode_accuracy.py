"""Top-1 accuracy by decode mode on large labelled photos (benchmark, not a test): what the default
decoding was chosen by (issue 20; docs/performance.md, "Decoding large JPEGs").

    python benchmarks/decode_accuracy.py [--photos DIR ...] [--model efficientnet_lite0] [--quality 92]
        [--multiples 2,3] [--only-multiples]

Labelled photos (``<wnid>_<name>.JPEG``, the true class in the name: tests/data/imagenet-labelled
by default; each ``--photos`` folder adds its own, by name once) and versions of them made larger
(Pillow LANCZOS upscale, saved as JPEG ``--quality``): the shorter side ``--multiples`` times the
model's resize size (2x and 3x: 512 and 768 px for 256), 12 MP with the aspect kept (4000x3000 for
a 4:3 photo) and 4032x3024 camera frames (3024x4032 for portrait photos; stretched to 4:3);
``--only-multiples`` leaves out all but the multiples. Each corpus goes through
the three decode modes (:data:`imgclassify.decode.imaging.DECODE_MODES`):

- ``exact`` (``--exact-decode``): every JPEG decoded at full size, then the exact path's resize;
- ``reduced`` (the default): JPEGs whose shorter side is at least twice the resize size decoded at
  reduced scale (libjpeg's DCT scaling, Pillow's ``Image.draft``, to the smallest scale that keeps
  the shorter side at least the resize size), then the same resize rule as ``exact``;
- ``fast`` (``--fast-decode``): reduced scale, and every image made smaller resized on torch's
  uint8 kernels.

Prints, per corpus and mode: top-1 correct, top-5 correct, top-1 flips against ``exact`` (each
photo named: which way it went), decode + preprocess time per image on one core, and whether the
mode keeps top-1 within 1 in 100 of ``exact`` (the issue's rule); then the total over all corpora
and the CPU it ran on. With 50 photos a corpus, 1 in 100 is half a photo: a mode passes a corpus
only with at least as many correct as ``exact``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "tests" / "data" / "imagenet-labelled"
BATCH = 10


def labelled_photos(folders: list[Path]) -> list[Path]:
    photos: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("n*_*.JPEG")):
            photos.setdefault(path.name, path)
    if not photos:
        raise SystemExit(f"no labelled photos (<wnid>_<name>.JPEG) in {', '.join(map(str, folders))}")
    return [photos[name] for name in sorted(photos)]


def scaled_corpus(
    photos: list[Path], folder: Path, size_of: Callable[[tuple[int, int]], tuple[int, int]], quality: int
) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in photos:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        target = folder / path.name
        rgb.resize(size_of(rgb.size), Image.Resampling.LANCZOS).save(target, format="JPEG", quality=quality)
        out.append(target)
    return out


def shorter_side(short: int) -> Callable[[tuple[int, int]], tuple[int, int]]:
    def size_of(size: tuple[int, int]) -> tuple[int, int]:
        scale = short / min(size)
        return max(short, round(size[0] * scale)), max(short, round(size[1] * scale))

    return size_of


def megapixels(area: float) -> Callable[[tuple[int, int]], tuple[int, int]]:
    def size_of(size: tuple[int, int]) -> tuple[int, int]:
        scale = (area / (size[0] * size[1])) ** 0.5
        return round(size[0] * scale), round(size[1] * scale)

    return size_of


def camera(size: tuple[int, int]) -> tuple[int, int]:
    return (4032, 3024) if size[0] >= size[1] else (3024, 4032)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, action="append", default=[], help="a folder of labelled photos")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--quality", type=int, default=92, help="JPEG quality of the upscaled photos")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--multiples", default="2,3", help="shorter sides, in resize sizes, comma-separated")
    parser.add_argument("--only-multiples", action="store_true", help="only the --multiples corpora")
    args = parser.parse_args()
    import torch

    from imgclassify import load_classifier
    from imgclassify.decode.decoder import Decoder
    from imgclassify.decode.imaging import DecodeMode, DecodeOptions
    from imgclassify.models.labels import imagenet_labels
    from imgclassify.system.capabilities import cpu_description
    from imgclassify.system.runtime import tune_allocator

    tune_allocator()  # as predict and serve run
    photos = labelled_photos(args.photos or [LABELLED])
    index_of = {label.wnid: i for i, label in enumerate(imagenet_labels())}
    truth = [index_of[p.name.split("_")[0]] for p in photos]
    clf = load_classifier(args.model, device="cpu")
    config = clf.preprocess_config
    resize = config.resize_size
    print(f"# decode accuracy: {len(photos)} labelled photos, {args.model} (resize {resize}, "
          f"{config.interpolation.value}), JPEG q{args.quality}; {cpu_description()}")  # fmt: skip
    modes = list(DecodeMode)
    totals = {mode: [0, 0] for mode in modes}  # correct, flips
    with tempfile.TemporaryDirectory() as tmp:
        corpora: dict[str, list[Path]] = {} if args.only_multiples else {"labelled photos (as they are)": photos}
        for multiple in (float(m) for m in args.multiples.split(",") if m.strip()):
            short = round(multiple * resize)
            folder = Path(tmp) / f"x{multiple:g}"
            corpora[f"shorter side {short} ({multiple:g}x)"] = scaled_corpus(
                photos, folder, shorter_side(short), args.quality
            )
        if not args.only_multiples:
            mp = megapixels(args.megapixels * 1e6)
            corpora[f"{args.megapixels:g} MP (aspect kept)"] = scaled_corpus(photos, Path(tmp) / "mp", mp, args.quality)
            corpora["4032x3024 camera frames"] = scaled_corpus(photos, Path(tmp) / "camera", camera, args.quality)
        for corpus, paths in corpora.items():
            print(f"\n## {corpus}\n")
            print(
                "| decoding | top-1 correct | top-5 correct | top-1 flips vs exact | decode + preprocess ms (1 core) | within 1 in 100 |"
            )
            print("| --- | --- | --- | --- | --- | --- |")  # fmt: skip
            top1: dict[DecodeMode, list[int]] = {}
            notes = []
            for mode in modes:
                decoder = Decoder(config, DecodeOptions(mode))
                torch.set_num_threads(1)
                start = time.perf_counter()
                tensors = [decoder(str(p)) for p in paths]
                ms = (time.perf_counter() - start) * 1000 / len(paths)
                torch.set_num_threads(2)
                with torch.inference_mode():
                    probs = torch.cat(
                        [clf.forward_uint8(torch.stack(tensors[i : i + BATCH])) for i in range(0, len(paths), BATCH)]
                    )
                ranked = probs.topk(5, dim=1).indices.tolist()
                top1[mode] = [r[0] for r in ranked]
                correct = sum(r[0] == t for r, t in zip(ranked, truth, strict=True))
                top5 = sum(t in r for r, t in zip(ranked, truth, strict=True))
                exact = top1[DecodeMode.EXACT]
                flipped = [i for i, (a, b) in enumerate(zip(exact, top1[mode], strict=True)) if a != b]
                exact_correct = sum(a == t for a, t in zip(exact, truth, strict=True))
                within = correct >= exact_correct - len(paths) / 100
                totals[mode][0] += correct
                totals[mode][1] += len(flipped)
                print(f"| {mode.value} | {correct}/{len(paths)} | {top5}/{len(paths)} | {len(flipped)} | {ms:.1f} | "
                      f"{'yes' if within else 'NO'} |", flush=True)  # fmt: skip
                for i in flipped:
                    before = "right" if exact[i] == truth[i] else "wrong"
                    after = "right" if top1[mode][i] == truth[i] else "wrong"
                    notes.append(
                        f"- {mode.value}: {photos[i].stem}: {exact[i]} ({before}) -> {top1[mode][i]} ({after})"
                    )
            if notes:
                print("\n" + "\n".join(notes))
    count = len(photos) * len(corpora)
    print(f"\n## All {len(corpora)} corpora ({count} images)\n")
    print("| decoding | top-1 correct | top-1 flips vs exact |")
    print("| --- | --- | --- |")
    for mode in modes:
        print(f"| {mode.value} | {totals[mode][0]}/{count} | {totals[mode][1]} |")


if __name__ == "__main__":
    main()
