"""Throughput benchmark (not a test): the tutorial's loop, the pure model, and `imgclassify
predict` end to end, in ONE run on one corpus, so the ratios compare like with like.

    python benchmarks/throughput.py [--model densenet121] [--images 500] [--device cpu]
                                    [--batch-size 8] [--configs default bf16 ...] [--memory]
                                    [--corpus imagenet|camera]

With ``--device cuda`` the tutorial loop and the pure model run on the GPU too, and a GPU
utilization column is added (the mean while the tool ran); ``fp16`` and ``cpu-decode`` (GPU
decoding off: IMGCLASSIFY_GPU_DECODE=0) are configs for that case. ``--corpus camera`` uses
4032x3024 JPEGs instead of ImageNet-sized photos.

Works offline: the model gets random weights saved to a temporary file (speed does not depend
on the weights' values). The corpus is built from the sample photos: varied sizes, some PNGs,
a grayscale image. Prints a Markdown table: images/s, peak RSS, tool/seed and tool/pure ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "samples").glob("*.jpg")) + sorted(
    (ROOT / "tests" / "data" / "imagenet-labelled").glob("*.JPEG")
)
EXE = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"

#: name -> extra `imgclassify predict` options
CONFIGS = {
    "default": [],
    "workers=1": ["--workers", "1"],
    "bf16": ["--precision", "bf16"],
    "openvino": ["--backend", "openvino"],
    "openvino-workers=0": ["--backend", "openvino", "--workers", "0"],
    "openvino-bf16": ["--backend", "openvino", "--precision", "bf16"],
    "openvino-bf16-workers=0": ["--backend", "openvino", "--precision", "bf16", "--workers", "0"],
    "openvino-bf16-workers=1": ["--backend", "openvino", "--precision", "bf16", "--workers", "1"],
    "bf16-workers=1": ["--precision", "bf16", "--workers", "1"],
    "fp16": ["--precision", "fp16"],
    "cpu-decode": [],  # with IMGCLASSIFY_GPU_DECODE=0 (CUDA runs): Pillow in worker processes
    "bf16-cpu-decode": ["--precision", "bf16"],
}
#: configs run with extra environment variables
CONFIG_ENV = {"cpu-decode": {"IMGCLASSIFY_GPU_DECODE": "0"}, "bf16-cpu-decode": {"IMGCLASSIFY_GPU_DECODE": "0"}}


def build_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        with Image.open(SOURCES[i % len(SOURCES)]) as src:
            image = src.convert("RGB")
        scale = rng.uniform(0.6, 1.6)
        image = image.resize((max(64, int(image.width * scale)), max(64, int(image.height * scale))))
        if i % 50 == 7:
            image = image.convert("L")
        suffix = ".png" if i % 20 == 3 else ".jpg"
        path = folder / f"img{i:05d}{suffix}"
        image.save(path, quality=90) if suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def random_weights(model: str, folder: Path) -> Path:
    import torch

    from imgclassify.architectures import build
    from imgclassify.registry import get_spec

    spec = get_spec(model)
    torch.manual_seed(0)
    path = folder / f"{model}-random.pth"
    torch.save(build(spec, spec.num_classes).state_dict(), path)
    return path


def seed_loop(model: str, weights: Path, paths: list[Path], device: str = "cpu") -> float:
    """The tutorial's way: one image at a time, PIL, Resize(255), no inference_mode, no batching."""
    import torch
    import torchvision.transforms as transforms
    from PIL import Image

    from imgclassify.architectures import build_with_state
    from imgclassify.registry import get_spec

    net, _ = build_with_state(get_spec(model), torch.load(weights, weights_only=True))
    net.eval().to(device)
    tf = transforms.Compose(
        [transforms.Resize(255), transforms.CenterCrop(224), transforms.ToTensor(),
         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )  # fmt: skip
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        outputs = net.forward(tf(image).unsqueeze(0).to(device))
        outputs.max(1)[1].item()  # as the tutorial returns the class: waits for the GPU too
    return len(paths) / (time.perf_counter() - start)


def pure_model(
    model: str, weights: Path, device: str, batch_size: int, precision: str, backend: str, seconds: float
) -> float:
    """The tool's classifier (same settings) on random uint8 tensors: no decoding at all."""
    import torch

    from imgclassify.pipeline import load_classifier

    clf = load_classifier(model, weights=weights, device=device, precision=precision, backend=backend)
    size = clf.preprocess_config.crop_size
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8).to(
        clf.device
    )  # as GPU decoding hands it
    clf.plan_batches(batch_size)  # as the tool does on a long run
    clf.forward_uint8(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clf.forward_uint8(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def run_tool(args: list[str], expected: int, extra_env: dict[str, str] | None = None) -> dict[str, float]:
    """`imgclassify predict ... -f jsonl` as a subprocess; times to first and last record, peak RSS."""
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", **(extra_env or {})}
    sampler = None
    if "cuda" in args:
        from gpu_stats import UtilizationSampler

        sampler = UtilizationSampler().__enter__()
    start = time.perf_counter()
    proc = subprocess.Popen([EXE, "predict", *args, "-f", "jsonl", "-q"], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = None
    lines = 0
    for _ in proc.stdout:
        lines += 1
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    gpu_util = float("nan")
    if sampler is not None:
        sampler.__exit__(None, None, None)
        gpu_util = sampler.mean if sampler.mean is not None else float("nan")
    if lines != expected:
        raise SystemExit(f"expected {expected} records, got {lines} (status {status})")
    first = first or total
    steady = (lines - 1) / (total - first) if total > first and lines > 1 else float("nan")
    return {
        "wall": total, "first": first, "rate_wall": lines / total, "rate": steady, "rss_mb": usage.ru_maxrss / 1024,
        "gpu_util": gpu_util,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed-images", type=int, default=100, help="images for the (slow) tutorial loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--configs", nargs="+", default=["default", "workers=1", "bf16", "bf16-workers=1"], choices=sorted(CONFIGS)
    )
    parser.add_argument("--pure-seconds", type=float, default=10.0)
    parser.add_argument("--memory", action="store_true", help="also compare peak RSS over 200 and 2,000 images")
    parser.add_argument("--corpus", choices=["imagenet", "camera"], default="imagenet", help="photo sizes")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="imgclassify-bench-"))
    os.environ["IMGCLASSIFY_CACHE"] = str(tmp / "cache")  # OpenVINO converts once per run, in the pure-model step
    try:
        if args.corpus == "camera":
            from gpu_stats import build_camera_corpus

            paths = build_camera_corpus(tmp / "corpus", args.images, SOURCES)
        else:
            paths = build_corpus(tmp / "corpus", args.images)
        weights = random_weights(args.model, tmp)
        common = [
            str(tmp / "corpus"),
            "-m",
            args.model,
            "--weights",
            str(weights),
            "-d",
            args.device,
            "-b",
            str(args.batch_size),
        ]
        gpu = args.device.startswith("cuda")
        from imgclassify.capabilities import cpu_description

        cpu = cpu_description()
        if gpu:
            import torch

            cpu += f"; GPU: {torch.cuda.get_device_name(args.device)}"
        print(
            f"# throughput: {args.model}, {args.images} images, batch {args.batch_size}, {args.device}, {cpu}, {os.cpu_count()} CPUs"
        )
        seed = seed_loop(args.model, weights, paths[: args.seed_images], args.device)
        print(f"tutorial loop: {seed:.1f} images/s over {min(args.seed_images, len(paths))} images", flush=True)
        one = run_tool([str(paths[0]), *common[1:]], 1)
        print(f"time to first result, one image, fresh process: {one['wall']:.2f}s", flush=True)
        rows = []
        for name in args.configs:
            extra = CONFIGS[name]
            precision = extra[extra.index("--precision") + 1] if "--precision" in extra else "fp32"
            backend = extra[extra.index("--backend") + 1] if "--backend" in extra else "torch"
            pure = pure_model(args.model, weights, args.device, args.batch_size, precision, backend, args.pure_seconds)
            tool = run_tool(common + extra, len(paths), CONFIG_ENV.get(name))
            rows.append((name, pure, tool))
            print(f"{name}: pure {pure:.1f}, tool {tool['rate']:.1f} images/s", flush=True)
        print()
        print(
            "| config | pure model img/s | tool img/s (steady) | tool img/s (whole run) | first record s | peak RSS MB | tool/seed | tool/pure |"
            + (" GPU util % |" if gpu else "")
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if gpu else ""))
        print(f"| tutorial loop | | {seed:.1f} | | | | 1.00 | |")
        for name, pure, tool in rows:
            print(
                f"| {name} | {pure:.1f} | {tool['rate']:.1f} | {tool['rate_wall']:.1f} | {tool['first']:.1f} | "
                f"{tool['rss_mb']:.0f} | {tool['rate'] / seed:.2f} | {tool['rate'] / pure:.2f} |"
                + (f" {tool['gpu_util']:.0f} |" if gpu else "")
            )
        if args.memory:
            small = build_corpus(tmp / "m200", 200, seed=1)
            big = build_corpus(tmp / "m2000", 2000, seed=2)
            extra = common[1:] + CONFIGS[args.configs[-1]]
            a = run_tool([str(tmp / "m200"), *extra], len(small))
            b = run_tool([str(tmp / "m2000"), *extra], len(big))
            print(f"\npeak RSS ({args.configs[-1]}): 200 images {a['rss_mb']:.0f} MB, 2,000 images {b['rss_mb']:.0f} MB "
                  f"({(b['rss_mb'] / a['rss_mb'] - 1) * 100:+.1f}%)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
