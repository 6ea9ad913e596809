"""Throughput benchmark (not a test): the tutorial's loop, the pure model, and `imgclassify
predict` end to end, in ONE run on one corpus, so the ratios compare like with like.

    python benchmarks/throughput.py [--model densenet121] [--images 500] [--device cpu]
                                    [--batch-size N] [--configs default bf16 ...] [--memory]
                                    [--corpus imagenet|medium|camera] [--no-timm] [--pure-each]

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
instead of ImageNet-sized photos, ``--corpus medium`` photos whose sides are 300-1600 px.

A second baseline beside the tutorial's: timm's own loader (``create_dataset`` + ``create_loader``,
2 decode processes, batch 8, ``no_grad``) with timm's build of the same architecture and the same
weights file, as a whole process too; the table's "x tutorial" and "x timm" columns are each
config's whole run against those two. The default configs (CPU) cover the defaults,
``--fast-decode``, bf16, OpenVINO bf16, int8 and int8 with ``--fast-decode``, and decode threads
in the main process (``--workers 0`` with IMGCLASSIFY_DECODE_THREADS) against decode processes
(``--workers 1`` / ``2``); ``--configs`` picks some (``all``: every one). The pure model is measured
once per precision and backend (``--pure-each``: before every config).
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

INT8_FAST = ["--precision", "int8", "--fast-decode"]

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
    # decode threads in the main process (--workers 0) against decode processes (--workers 1/2)
    "workers=0-threads=0": ["--workers", "0", "IMGCLASSIFY_DECODE_THREADS=0"],
    "workers=0-threads=1": ["--workers", "0", "IMGCLASSIFY_DECODE_THREADS=1"],
    "workers=0-threads=2": ["--workers", "0", "IMGCLASSIFY_DECODE_THREADS=2"],
    "workers=2": ["--workers", "2"],
    "fast-decode": ["--fast-decode"],
    "exact-decode": ["--exact-decode"],  # where the tool has it (full-size decoding, when it is not the default)
    "int8-exact-decode": ["--precision", "int8", "--exact-decode"],
    "fast-decode-workers=0-threads=2": ["--fast-decode", "--workers", "0", "IMGCLASSIFY_DECODE_THREADS=2"],
    "fast-decode-workers=1": ["--fast-decode", "--workers", "1"],
    "int8-workers=0-threads=1": ["--precision", "int8", "--workers", "0", "IMGCLASSIFY_DECODE_THREADS=1"],
    "int8-workers=0-threads=2": ["--precision", "int8", "--workers", "0", "IMGCLASSIFY_DECODE_THREADS=2"],
    "int8-workers=1": ["--precision", "int8", "--workers", "1"],
    "int8-workers=2": ["--precision", "int8", "--workers", "2"],
    "int8-fast-decode": ["--precision", "int8", "--fast-decode"],
    "int8-fast-decode-workers=0-threads=2": [*INT8_FAST, "--workers", "0", "IMGCLASSIFY_DECODE_THREADS=2"],
    "int8-fast-decode-workers=1": [*INT8_FAST, "--workers", "1"],
    "int8-fast-decode-workers=2": [*INT8_FAST, "--workers", "2"],
    "bf16-fast-decode": ["--precision", "bf16", "--fast-decode"],
    "openvino-bf16-fast-decode": ["--backend", "openvino", "--precision", "bf16", "--fast-decode"],
}

DECODE_LABELS = {"default": "default decoding", "exact": "--exact-decode", "fast": "--fast-decode"}

#: what one CPU run compares when no --configs are given (``all``: every config in CONFIGS)
CPU_CONFIGS = [
    "default", "exact-decode", "fast-decode",
    "workers=0-threads=0", "workers=0-threads=1", "workers=0-threads=2", "workers=1", "workers=2",
    "bf16", "bf16-fast-decode", "openvino-bf16", "openvino-bf16-workers=0", "openvino-bf16-fast-decode",
    "int8", "int8-exact-decode", "int8-fast-decode",
    "int8-workers=0-threads=0", "int8-workers=0-threads=2", "int8-workers=1", "int8-workers=2",
    "int8-fast-decode-workers=0-threads=2", "int8-fast-decode-workers=1", "int8-fast-decode-workers=2",
]  # fmt: skip
CUDA_CONFIGS = ["default", "threads=0", "bf16", "int8"]


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


#: aspect ratios (width / height) of the medium corpus: camera, phone, square, portrait, panorama-ish
MEDIUM_ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16, 5 / 4, 2.0)


def build_medium_corpus(folder: Path, count: int, seed: int = 0, low: int = 300, high: int = 1600) -> list[Path]:
    """``count`` photos whose sides are all within ``low``-``high`` px, various aspect ratios.

    Each is a sample photo center-cropped to the aspect ratio drawn and resized so its long side
    is drawn uniformly within the range (its short side no smaller than ``low``); mostly JPEG at
    quality 85-95, one in 20 PNG, one in 50 grayscale, as :func:`build_corpus`. Deterministic.
    """
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        with Image.open(SOURCES[i % len(SOURCES)]) as src:
            image = src.convert("RGB")
        aspect = rng.choice(MEDIUM_ASPECTS)
        long_side = rng.randint(low, high)
        if aspect >= 1:
            width, height = long_side, max(low, round(long_side / aspect))
        else:
            width, height = max(low, round(long_side * aspect)), long_side
        width, height = min(high, max(width, low)), min(high, max(height, low))
        # center-crop the source to width:height, then resize (a photo, not a stretched one)
        scale = min(image.width / width, image.height / height)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.LANCZOS)
        if i % 50 == 7:
            image = image.convert("L")
        suffix = ".png" if i % 20 == 3 else ".jpg"
        path = folder / f"med{i:05d}{suffix}"
        image.save(path, quality=rng.randint(85, 95)) if suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def corpus_summary(paths: list[Path]) -> str:
    """Image count, formats, and the range and median of the sides and megapixels."""
    from PIL import Image

    sides, pixels, formats = [], [], {}
    for path in paths:
        with Image.open(path) as image:
            sides += image.size
            pixels.append(image.width * image.height / 1e6)
            formats[str(image.format)] = formats.get(str(image.format), 0) + 1
    sides.sort()
    pixels.sort()
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(formats.items()))
    return (f"{len(paths)} images ({kinds}), sides {sides[0]}-{sides[-1]} px (median {sides[len(sides) // 2]}), "
            f"{pixels[0]:.2f}-{pixels[-1]:.2f} MP (median {pixels[len(pixels) // 2]:.2f})")  # fmt: skip


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


#: timm's loader baseline: decode processes and batch size (what a PyTorch user would pick)
TIMM_WORKERS, TIMM_BATCH = 2, 8


def timm_net(model: str, weights: Path, device: str) -> tuple[Any, dict[str, Any], str]:
    """timm's own build of ``model``'s architecture with the ``weights`` file, and its data config.

    The data config is timm's ``resolve_data_config`` given the weights' preprocessing (the
    model spec's resize / crop / interpolation / mean / std, as every other config gets), so the
    work per image matches. An architecture timm does not have, or whose keys differ, falls back
    to the tutorial's build (said in the third item).
    """
    import timm
    import torch
    from timm.data import resolve_data_config

    from imgclassify.models.architectures import build_with_state
    from imgclassify.models.registry import get_spec

    spec = get_spec(model)
    state = torch.load(weights, weights_only=True)
    net, built = None, f"timm.create_model({spec.architecture!r})"
    if timm.is_model(spec.architecture):
        candidate = timm.create_model(spec.architecture, pretrained=False, num_classes=spec.num_classes)
        try:
            candidate.load_state_dict(state, strict=True)
            net = candidate
        except RuntimeError:
            pass
    if net is None:
        net, _ = build_with_state(spec, state)
        built = f"imgclassify's build of {spec.architecture} (timm has none with these keys)"
    net.eval().to(device)
    pre = spec.preprocess
    config = resolve_data_config(
        {"input_size": (3, pre.crop_size, pre.crop_size), "crop_pct": pre.crop_size / pre.resize_size,
         "interpolation": str(getattr(pre.interpolation, "value", pre.interpolation)), "mean": tuple(pre.mean),
         "std": tuple(pre.std)},
        model=net,
    )  # fmt: skip
    return net, config, built


def timm_process(model: str, weights: Path, folder: Path, expected: int, device: str = "cpu") -> dict[str, float]:
    """timm's loader as a whole process over ``folder`` (its start-up counted), one line per image."""
    command = [sys.executable, __file__, "--timm-run", model, str(weights), str(folder), device]
    return run_command(command, expected, {}, cuda_index(device) if is_cuda(device) else None)


def timm_main(model: str, weights: str, folder: str, device: str) -> None:
    """``create_dataset`` + ``create_loader`` (2 workers, batch 8), ``no_grad``, the argmax per image."""
    import torch
    from timm.data import create_dataset, create_loader

    net, config, _ = timm_net(model, Path(weights), device)
    dataset = create_dataset("", root=folder)
    cuda = is_cuda(device)
    loader = create_loader(
        dataset, input_size=config["input_size"], batch_size=TIMM_BATCH, is_training=False,
        interpolation=config["interpolation"], mean=config["mean"], std=config["std"], crop_pct=config["crop_pct"],
        crop_mode=config.get("crop_mode"), num_workers=TIMM_WORKERS, use_prefetcher=cuda, pin_memory=cuda,
        device=torch.device(device),
    )  # fmt: skip
    names = [Path(str(dataset.filename(i))).name for i in range(len(dataset))]
    done = 0
    with torch.no_grad():
        for images, _ in loader:
            classes = net(images.to(device)).argmax(1).tolist()
            for name, index in zip(names[done : done + len(classes)], classes, strict=True):
                print(name, index, flush=True)
            done += len(classes)


def cpu_summary() -> str:
    """lscpu's model name, CPU count, threads per core and the flags that matter here."""
    info: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
        info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(info.get("Flags", "").split())
    if not flags and Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "model name"):
                if key.strip() == "flags":
                    flags = set(value.split())
                info.setdefault("Model name", value.strip())
            if flags and "Model name" in info:
                break
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
              "amx_bf16", "amx_int8")  # fmt: skip
    shown = " ".join(flag for flag in wanted if flag in flags) or "none of the AVX2/AVX-512/AMX flags"
    missing = " ".join(flag for flag in ("avx512f", "avx512_bf16", "amx_tile") if flag not in flags)
    model = info.get("Model name", platform.processor() or "unknown CPU")
    count = info.get("CPU(s)", str(os.cpu_count()))
    per_core = info.get("Thread(s) per core", "?")
    return f"{model}, {count} CPUs ({per_core} threads per core), flags: {shown}" + (
        f"; no {missing}" if missing else ""
    )


def decode_options(kind: str) -> Any:
    """The tool's DecodeOptions for ``kind``: "default", "exact" (--exact-decode) or "fast" (--fast-decode).

    Where the tool has no decode modes (no --exact-decode), "exact" is its default.
    """
    from imgclassify.decode import imaging

    mode = getattr(imaging, "DecodeMode", None)
    if mode is None:  # before the decode modes: fast or not
        return imaging.DecodeOptions(fast=kind == "fast")
    return imaging.DecodeOptions(mode={"fast": mode.FAST, "exact": mode.EXACT}.get(kind, imaging.DEFAULT_DECODE_MODE))


def decode_kind(extra: list[str]) -> str:
    """Which decode cost a config pays: "fast", "exact" or "default"."""
    return "fast" if "--fast-decode" in extra else "exact" if "--exact-decode" in extra else "default"


def missing_options(configs: list[str]) -> dict[str, str]:
    """config -> a note, for the configs whose options this `imgclassify predict` does not have."""
    wanted = {item for name in configs for item in CONFIGS[name] if item.startswith("--")}
    if not wanted:
        return {}
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    help_text = subprocess.run([EXE, "predict", "--help"], capture_output=True, text=True, env=env, check=False).stdout
    notes = {}
    for name in configs:
        absent = [item for item in CONFIGS[name] if item.startswith("--") and item not in help_text]
        if absent:
            notes[name] = f"skipped: this imgclassify predict has no {' '.join(absent)}"
    return notes


def decode_cost_ms(model: str, paths: list[Path], kind: str = "default") -> float:
    """Decode + preprocess, one core (this thread), ms per image over ``paths`` (``kind``: :func:`decode_options`)."""
    from imgclassify.decode.loading import Decoder
    from imgclassify.models.registry import get_spec

    decoder = Decoder(get_spec(model).preprocess, decode_options(kind))
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
    for _ in range(3):  # eager on the first, the frozen graph traced on the second (frozen.py), then warm
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
    if len(sys.argv) == 6 and sys.argv[1] == "--timm-run":
        timm_main(*sys.argv[2:])
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
        "--configs",
        nargs="+",
        default=None,
        choices=["all", *sorted(CONFIGS)],
        help="the configs to run (default: the CPU comparison list, or default threads=0 bf16 int8 on CUDA; all: every one)",
    )
    parser.add_argument("--pure-seconds", type=float, default=10.0)
    parser.add_argument(
        "--pure-each",
        action="store_true",
        help="measure the pure model before every config (default: once per precision and backend)",
    )
    parser.add_argument("--memory", action="store_true", help="also compare peak RSS over 200 and 2,000 images")
    parser.add_argument(
        "--corpus",
        choices=["imagenet", "medium", "camera"],
        default="imagenet",
        help="photo sizes: ImageNet-sized (the sample photos scaled 0.6-1.6x), medium (sides 300-1600 px), camera (4032x3024 JPEGs)",
    )
    parser.add_argument("--no-timm", action="store_true", help="skip timm's loader baseline")
    args = parser.parse_args()
    if args.configs is None:
        args.configs = CUDA_CONFIGS if is_cuda(args.device) else CPU_CONFIGS
    elif "all" in args.configs:
        args.configs = list(CONFIGS)
    from imgclassify.decode import imaging
    from imgclassify.decode.loading import resolve_batch_size
    from imgclassify.system.capabilities import cpu_description, cpu_features

    args.batch_size = resolve_batch_size(args.batch_size, args.device)

    tmp = Path(tempfile.mkdtemp(prefix="imgclassify-bench-"))
    os.environ["IMGCLASSIFY_CACHE"] = str(tmp / "cache")  # OpenVINO converts (int8: quantizes) in the pure-model step
    try:
        built = time.perf_counter()
        if args.corpus == "camera":
            from gpu_stats import build_camera_corpus

            paths = build_camera_corpus(tmp / "corpus", args.images, SOURCES)
        elif args.corpus == "medium":
            paths = build_medium_corpus(tmp / "corpus", args.images)
        else:
            paths = build_corpus(tmp / "corpus", args.images)
        built = time.perf_counter() - built
        weights = random_weights(args.model, tmp)
        common = [str(tmp / "corpus"), "-m", args.model, "--weights", str(weights), "-d", args.device,
                  "-b", str(args.batch_size)]  # fmt: skip
        cores = cpu_features().cores
        gpu = cuda_index(args.device) if is_cuda(args.device) else None
        gpu_name = ""
        if gpu is not None:
            import torch

            gpu_name = f", GPU: {torch.cuda.get_device_name(gpu)}"
        print(f"# CPU model (lscpu): {cpu_summary()}")
        print(f"# throughput: {args.model}, {args.images} images ({args.corpus} corpus), batch {args.batch_size}, "
              f"{args.device}{gpu_name}")  # fmt: skip
        print(f"# CPU: {cpu_description()} (fast bf16: {cpu_features().fast_bf16})")
        print(f"# corpus: {corpus_summary(paths)}; built in {built:.0f} s")
        print(f"# {platform.python_version()}, {platform.platform(terse=True)}")
        seed = seed_loop(args.model, weights, paths[: args.seed_images], args.device)
        print(f"tutorial loop, in-process: {seed:.1f} images/s over {min(args.seed_images, len(paths))} images")
        sample = paths[:200]
        kinds = ["default", "exact", "fast"] if hasattr(imaging, "DecodeMode") else ["default", "fast"]
        costs = {kind: decode_cost_ms(args.model, sample, kind) for kind in kinds}
        costs.setdefault("exact", costs["default"])
        cost_text = ", ".join(f"{costs[kind]:.2f} ms {DECODE_LABELS[kind]}" for kind in kinds)
        print(f"decode + preprocess, one core, per image: {cost_text} ({len(sample)} corpus images)", flush=True)
        tutorial = tutorial_process(args.model, weights, tmp / "corpus", len(paths), args.device)
        print(f"tutorial loop, whole process: {tutorial['wall']:.1f} s for {len(paths)} images "
              f"(first record {tutorial['first']:.2f} s, steady {tutorial['rate']:.1f} images/s)", flush=True)  # fmt: skip
        timm: dict[str, float] | None = None
        if not args.no_timm:
            _, timm_config, timm_built = timm_net(args.model, weights, "cpu")
            timm = timm_process(args.model, weights, tmp / "corpus", len(paths), args.device)
            print(f"timm loader ({timm_built}, create_loader, {TIMM_WORKERS} workers, batch {TIMM_BATCH}, "
                  f"{timm_config['interpolation']} crop_pct {timm_config['crop_pct']:.3f}), whole process: "
                  f"{timm['wall']:.1f} s (first record {timm['first']:.2f} s, steady {timm['rate']:.1f} images/s)",
                  flush=True)  # fmt: skip
        one = run_tool([str(paths[0]), *common[1:]], 1)
        print(f"imgclassify, one image, fresh process: first record {one['first']:.2f} s", flush=True)
        rows: list[tuple[str, float | None, dict[str, float] | None, str | None]] = []
        pures: dict[tuple[str, str], float] = {}  # the pure model, once per precision and backend
        absent = missing_options(args.configs)
        for name in args.configs:
            extra, env = split_config(CONFIGS[name])
            note = absent.get(name) or unsupported(extra, args.device)
            if note and note.startswith("skipped"):
                rows.append((name, None, None, note))
                print(f"{name}: {note}", flush=True)
                continue
            precision = extra[extra.index("--precision") + 1] if "--precision" in extra else "fp32"
            backend = extra[extra.index("--backend") + 1] if "--backend" in extra else "torch"
            if args.pure_each or (precision, backend) not in pures:
                pures[precision, backend] = pure_model(
                    args.model, weights, args.device, args.batch_size, precision, backend, args.pure_seconds
                )
            pure = pures[precision, backend]
            tool = run_tool(common + extra, len(paths), env, gpu)
            rows.append((name, pure, tool, note))
            print(f"{name}: pure {pure:.1f}, tool {tool['rate']:.1f} images/s", flush=True)
        print()
        print("limit = the cores' budget: cores / (decode core-s + cores / pure model rate) images/s, "
              f"with {cores} cores and the decode cost of each config's mode ({cost_text}); "
              "x tutorial, x timm: the whole run's wall time against that baseline's whole process")  # fmt: skip
        gpu_head, gpu_rule = (" GPU util % |", " ---: |") if gpu is not None else ("", "")
        print(
            "| config | pure model img/s | limit img/s | tool img/s (steady) | steady/limit | whole run s "
            f"| whole run img/s | first record s | peak RSS MB | x tutorial | x timm | note |{gpu_head}"
        )
        print(f"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |{gpu_rule}")

        def x_timm(wall: float) -> str:
            return f"{timm['wall'] / wall:.2f}" if timm is not None else ""

        def gpu_cell(result: dict[str, float]) -> str:
            return f" {result['gpu_util']:.0f} |" if gpu is not None else ""

        baselines = [("tutorial loop (process)", tutorial, "")]
        if timm is not None:
            baselines.append((f"timm loader (process, {TIMM_WORKERS} workers)", timm, "create_loader"))
        for label, result, note in baselines:
            print(f"| {label} | | | {result['rate']:.1f} | | {result['wall']:.1f} | {result['rate_wall']:.1f} | "
                  f"{result['first']:.1f} | {result['rss_mb']:.0f} | {tutorial['wall'] / result['wall']:.2f} | "
                  f"{x_timm(result['wall'])} | {note} |{gpu_cell(result)}")  # fmt: skip
        for name, row_pure, row_tool, note in rows:
            if row_pure is None or row_tool is None:
                print(f"| {name} | | | | | | | | | | | {note} |" + (" |" if gpu is not None else ""))
                continue
            pure, tool = row_pure, row_tool
            cost = costs[decode_kind(CONFIGS[name])]
            limit = cores / (cost / 1000 + cores / pure)
            print(
                f"| {name} | {pure:.1f} | {limit:.1f} | {tool['rate']:.1f} | {tool['rate'] / limit:.2f} | "
                f"{tool['wall']:.1f} | {tool['rate_wall']:.1f} | {tool['first']:.1f} | {tool['rss_mb']:.0f} | "
                f"{tutorial['wall'] / tool['wall']:.2f} | {x_timm(tool['wall'])} | {note or ''} |{gpu_cell(tool)}"
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
