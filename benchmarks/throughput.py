"""Throughput benchmark (not a test): the tutorial's loop, the pure model, and `imgclassify
predict` end to end, in ONE run on one corpus, so the ratios compare like with like.

    python benchmarks/throughput.py [--model densenet121] [--images 500] [--device cpu]
                                    [--batch-size N] [--configs default bf16 ...] [--memory]
                                    [--corpus imagenet|camera]

Works offline: the model gets random weights saved to a temporary file (speed does not depend
on the weights' values). The corpus is built from the sample photos: varied sizes, some PNGs,
a grayscale image. Prints the CPU it detected, the tutorial's loop in-process and as a whole
process over the corpus (its start-up counted), the decode cost per image, and a Markdown table:
the pure model, the limit of the cores' budget (decode + model), the tool's steady rate, whole
runs against the tutorial's whole process, first record, peak RSS. Configs this CPU cannot run
(OpenVINO bf16 without bf16 hardware) are skipped; emulated ones are marked.

With ``--device cuda`` the tutorial loop (in-process and whole process) and the pure model run on
the GPU too, the header names the GPU, and a GPU utilization column is added (the mean while each
process ran); ``fp16`` and ``cpu-decode`` / ``bf16-cpu-decode`` (GPU decoding off:
IMGCLASSIFY_GPU_DECODE=0) are configs for that case. ``--corpus camera`` uses 4032x3024 JPEGs
instead of ImageNet-sized photos.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "samples").glob("*.jpg")) + sorted(
    (ROOT / "tests" / "data" / "imagenet-labelled").glob("*.JPEG")
)
EXE = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"

#: name -> extra `imgclassify predict` options (``NAME=VALUE`` items are environment variables)
CONFIGS = {
    "default": [],
    "threads=0": ["IMGCLASSIFY_DECODE_THREADS=0"],
    "workers=1": ["--workers", "1"],
    "bf16": ["--precision", "bf16"],
    "openvino": ["--backend", "openvino"],
    "openvino-workers=0": ["--backend", "openvino", "--workers", "0"],
    "openvino-bf16": ["--backend", "openvino", "--precision", "bf16"],
    "openvino-bf16-workers=0": ["--backend", "openvino", "--precision", "bf16", "--workers", "0"],
    "openvino-bf16-workers=1": ["--backend", "openvino", "--precision", "bf16", "--workers", "1"],
    "bf16-workers=1": ["--precision", "bf16", "--workers", "1"],
    "int8": ["--precision", "int8"],
    "int8-workers=0": ["--precision", "int8", "--workers", "0"],
    "int8-workers=0-threads=0": ["--precision", "int8", "--workers", "0", "IMGCLASSIFY_DECODE_THREADS=0"],
    "fp16": ["--precision", "fp16"],
    "cpu-decode": ["IMGCLASSIFY_GPU_DECODE=0"],  # CUDA runs: Pillow decoding on the CPU instead of nvJPEG
    "bf16-cpu-decode": ["--precision", "bf16", "IMGCLASSIFY_GPU_DECODE=0"],
}


def split_config(extra: list[str]) -> tuple[list[str], dict[str, str]]:
    env = dict(item.split("=", 1) for item in extra if "=" in item and not item.startswith("-"))
    return [item for item in extra if item.split("=", 1)[0] not in env], env


def unsupported(extra: list[str], device: str = "cpu") -> str | None:
    """Why this CPU cannot run a config well (None: it can)."""
    from imgclassify.system.capabilities import cpu_features

    if is_cuda(device):
        return None  # the notes below are about the CPU's instructions
    if "fp16" in extra:
        return "skipped: fp16 is for the GPU (the tool refuses it on the CPU: use bf16)"
    cpu = cpu_features()
    if "bf16" in extra and not cpu.fast_bf16:
        if "openvino" in extra:
            return "skipped: OpenVINO refuses bf16 on a CPU without AVX-512 BF16 or AMX"
        return "emulated: no AVX-512 BF16 or AMX, torch emulates bf16"
    if "int8" in extra and not (cpu.vnni or cpu.amx):
        return "no VNNI or AMX: int8 without int8 dot products"
    return None


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


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

    from imgclassify.models.architectures import build
    from imgclassify.models.registry import get_spec

    spec = get_spec(model)
    torch.manual_seed(0)
    path = folder / f"{model}-random.pth"
    torch.save(build(spec, spec.num_classes).state_dict(), path)
    return path


def tutorial_net(model: str, weights: Path, device: str) -> tuple[Any, Any]:
    """The tutorial's model and transforms: Resize(255), CenterCrop(224), ToTensor, Normalize."""
    import torch
    import torchvision.transforms as transforms

    from imgclassify.models.architectures import build_with_state
    from imgclassify.models.registry import get_spec

    net, _ = build_with_state(get_spec(model), torch.load(weights, weights_only=True))
    net.eval().to(device)
    tf = transforms.Compose(
        [transforms.Resize(255), transforms.CenterCrop(224), transforms.ToTensor(),
         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )  # fmt: skip
    return net, tf


def seed_loop(model: str, weights: Path, paths: list[Path], device: str = "cpu") -> float:
    """The tutorial's way: one image at a time, PIL, Resize(255), no inference_mode, no batching."""
    from PIL import Image

    net, tf = tutorial_net(model, weights, device)
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        outputs = net.forward(tf(image).unsqueeze(0).to(device))
        if is_cuda(device):
            outputs.max(1)[1].item()  # as the tutorial returns the class: waits for the GPU too
        else:
            outputs.max(1)
    return len(paths) / (time.perf_counter() - start)


def tutorial_process(model: str, weights: Path, folder: Path, expected: int, device: str = "cpu") -> dict[str, float]:
    """The tutorial's loop as a whole process over ``folder`` (its start-up counted), one line per image."""
    command = [sys.executable, __file__, "--tutorial-run", model, str(weights), str(folder), device]
    return run_command(command, expected, {}, cuda_index(device) if is_cuda(device) else None)


def tutorial_main(model: str, weights: str, folder: str, device: str) -> None:
    net_loop(model, Path(weights), sorted(Path(folder).iterdir()), device)


def net_loop(model: str, weights: Path, paths: list[Path], device: str = "cpu") -> None:
    from PIL import Image

    net, tf = tutorial_net(model, weights, device)
    for path in paths:
        image = Image.open(path).convert("RGB")
        outputs = net.forward(tf(image).unsqueeze(0).to(device))
        print(path.name, int(outputs.max(1)[1]), flush=True)


def decode_cost_ms(model: str, paths: list[Path]) -> float:
    """Decode + preprocess, one core (this thread), ms per image over ``paths``."""
    from imgclassify.decode.loading import Decoder
    from imgclassify.models.registry import get_spec

    decoder = Decoder(get_spec(model).preprocess)
    start = time.perf_counter()
    for path in paths:
        decoder.try_decode(str(path))
    return (time.perf_counter() - start) * 1000 / len(paths)


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
    )  # where the tool's loader hands it (GPU decoding: already on the GPU)
    clf.plan_batches(batch_size, 1000)  # as the tool does on a long run
    clf.forward_uint8(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clf.forward_uint8(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def run_tool(
    args: list[str], expected: int, env: dict[str, str] | None = None, gpu: int | None = None
) -> dict[str, float]:
    """`imgclassify predict ... -f jsonl` as a subprocess; times to first and last record, peak RSS.

    ``gpu``: a CUDA device index whose utilization is sampled while the tool runs (``gpu_util``).
    """
    return run_command([EXE, "predict", *args, "-f", "jsonl", "-q"], expected, env or {}, gpu)


def run_command(
    command: list[str], expected: int, extra_env: dict[str, str], gpu: int | None = None
) -> dict[str, float]:
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", **extra_env}
    sampler = None
    if gpu is not None:
        from gpu_stats import UtilizationSampler

        sampler = UtilizationSampler(gpu).__enter__()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
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
    if len(sys.argv) == 6 and sys.argv[1] == "--tutorial-run":
        tutorial_main(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed-images", type=int, default=100, help="images for the in-process tutorial loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the tool's own for --device (8 on the CPU, 64 on CUDA)"
    )
    parser.add_argument(
        "--configs", nargs="+", default=["default", "threads=0", "bf16", "int8"], choices=sorted(CONFIGS)
    )
    parser.add_argument("--pure-seconds", type=float, default=10.0)
    parser.add_argument("--memory", action="store_true", help="also compare peak RSS over 200 and 2,000 images")
    parser.add_argument("--corpus", choices=["imagenet", "camera"], default="imagenet", help="photo sizes")
    args = parser.parse_args()
    from imgclassify.decode.loading import resolve_batch_size
    from imgclassify.system.capabilities import cpu_description, cpu_features

    args.batch_size = resolve_batch_size(args.batch_size, args.device)

    tmp = Path(tempfile.mkdtemp(prefix="imgclassify-bench-"))
    os.environ["IMGCLASSIFY_CACHE"] = str(tmp / "cache")  # OpenVINO converts (int8: quantizes) in the pure-model step
    try:
        if args.corpus == "camera":
            from gpu_stats import build_camera_corpus

            paths = build_camera_corpus(tmp / "corpus", args.images, SOURCES)
        else:
            paths = build_corpus(tmp / "corpus", args.images)
        weights = random_weights(args.model, tmp)
        common = [str(tmp / "corpus"), "-m", args.model, "--weights", str(weights), "-d", args.device,
                  "-b", str(args.batch_size)]  # fmt: skip
        cores = cpu_features().cores
        gpu = cuda_index(args.device) if is_cuda(args.device) else None
        gpu_name = ""
        if gpu is not None:
            import torch

            gpu_name = f", GPU: {torch.cuda.get_device_name(gpu)}"
        print(f"# throughput: {args.model}, {args.images} images, batch {args.batch_size}, {args.device}{gpu_name}")
        print(f"# CPU: {cpu_description()} (fast bf16: {cpu_features().fast_bf16})")
        print(f"# {platform.python_version()}, {platform.platform(terse=True)}")
        seed = seed_loop(args.model, weights, paths[: args.seed_images], args.device)
        print(f"tutorial loop, in-process: {seed:.1f} images/s over {min(args.seed_images, len(paths))} images")
        decode_ms = decode_cost_ms(args.model, paths[:200])
        print(f"decode + preprocess, one core: {decode_ms:.2f} ms per image (200 corpus images)", flush=True)
        tutorial = tutorial_process(args.model, weights, tmp / "corpus", len(paths), args.device)
        print(f"tutorial loop, whole process: {tutorial['wall']:.1f} s for {len(paths)} images "
              f"(first record {tutorial['first']:.2f} s, steady {tutorial['rate']:.1f} images/s)", flush=True)  # fmt: skip
        one = run_tool([str(paths[0]), *common[1:]], 1)
        print(f"imgclassify, one image, fresh process: first record {one['first']:.2f} s", flush=True)
        rows: list[tuple[str, float | None, dict[str, float] | None, str | None]] = []
        for name in args.configs:
            extra, env = split_config(CONFIGS[name])
            note = unsupported(extra, args.device)
            if note and note.startswith("skipped"):
                rows.append((name, None, None, note))
                print(f"{name}: {note}", flush=True)
                continue
            precision = extra[extra.index("--precision") + 1] if "--precision" in extra else "fp32"
            backend = extra[extra.index("--backend") + 1] if "--backend" in extra else "torch"
            pure = pure_model(args.model, weights, args.device, args.batch_size, precision, backend, args.pure_seconds)
            tool = run_tool(common + extra, len(paths), env, gpu)
            rows.append((name, pure, tool, note))
            print(f"{name}: pure {pure:.1f}, tool {tool['rate']:.1f} images/s", flush=True)
        print()
        print("limit = the cores' budget: cores / (decode core-s + cores / pure model rate) images/s, "
              f"with {cores} cores and {decode_ms:.2f} ms decode per image")  # fmt: skip
        print(
            "| config | pure model img/s | limit img/s | tool img/s (steady) | steady/limit | whole run s "
            "| first record s | peak RSS MB | whole run vs tutorial process | note |"
            + (" GPU util % |" if gpu is not None else "")
        )
        print(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
            + (" ---: |" if gpu is not None else "")
        )
        print(f"| tutorial loop (process) | | | {tutorial['rate']:.1f} | | {tutorial['wall']:.1f} | "
              f"{tutorial['first']:.1f} | {tutorial['rss_mb']:.0f} | 1.00 | |"
              + (f" {tutorial['gpu_util']:.0f} |" if gpu is not None else ""))  # fmt: skip
        for name, row_pure, row_tool, note in rows:
            if row_pure is None or row_tool is None:
                print(f"| {name} | | | | | | | | | {note} |" + (" |" if gpu is not None else ""))
                continue
            pure, tool = row_pure, row_tool
            limit = cores / (decode_ms / 1000 + cores / pure)
            print(
                f"| {name} | {pure:.1f} | {limit:.1f} | {tool['rate']:.1f} | {tool['rate'] / limit:.2f} | "
                f"{tool['wall']:.1f} | {tool['first']:.1f} | {tool['rss_mb']:.0f} | "
                f"{tutorial['wall'] / tool['wall']:.2f} | {note or ''} |"
                + (f" {tool['gpu_util']:.0f} |" if gpu is not None else "")
            )
        if args.memory:
            small = build_corpus(tmp / "m200", 200, seed=1)
            big = build_corpus(tmp / "m2000", 2000, seed=2)
            extra, env = split_config(CONFIGS[args.configs[-1]])
            a = run_tool([str(tmp / "m200"), *common[1:], *extra], len(small), env)
            b = run_tool([str(tmp / "m2000"), *common[1:], *extra], len(big), env)
            print(f"\npeak RSS ({args.configs[-1]}): 200 images {a['rss_mb']:.0f} MB, 2,000 images {b['rss_mb']:.0f} MB "
                  f"({(b['rss_mb'] / a['rss_mb'] - 1) * 100:+.1f}%)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
