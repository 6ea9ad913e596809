"""``imgclassify doctor``: what this environment offers, and a preprocessing parity check.

Each :class:`Check` has a status: ``ok``, ``info`` (a fact, neither good nor bad), ``warn``
(works, but something could be better) or ``fail`` (something imgclassify needs is broken).
:func:`run_checks` returns them in a fixed order; the CLI prints them and exits 1 on a failure.
"""

from __future__ import annotations

import enum
import io
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.extras import install_hint

if TYPE_CHECKING:
    from rich.console import Console

#: the largest difference allowed between imgclassify's preprocessing and torchvision's reference
#: where both resize with Pillow (the shorter side under 4x the resize size: exact pixels)
PARITY_TOLERANCE = 1e-5
#: where imgclassify resizes on torch's uint8 kernels (the shorter side at least 4x the resize
#: size): levels (of 255) apart at most (docs/performance.md, "Resize": 1 on the photos measured)
PARITY_LEVELS = 1
#: the generated JPEG that takes torch's resize (2.2 MP: the shorter side 4.7x densenet121's 256)
LARGE_SAMPLE = (1800, 1200)
#: the table's width into a file or a pipe: wide enough that no detail wraps (lines are as long as they need)
UNWRAPPED_WIDTH = 1 << 16


class Status(str, enum.Enum):
    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check(
        "python",
        Status.OK if ok else Status.FAIL,
        f"{platform.python_version()} ({sys.executable})" + ("" if ok else "; imgclassify needs Python 3.10+"),
    )


def check_torch() -> Check:
    try:
        import torch
    except ImportError as exc:
        return Check("torch", Status.FAIL, f"cannot import torch ({exc}); pip install torch torchvision")
    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else "CPU-only build"
    return Check("torch", Status.OK, f"{torch.__version__}, {build}; torchvision {_version('torchvision')}")


def check_accelerators() -> Check:
    import torch

    parts = []
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"CUDA available: {', '.join(names)}")
    else:
        why = "this torch is a CPU-only build" if not torch.version.cuda else "no usable GPU or driver"
        parts.append(f"CUDA not available ({why})")
    mps = getattr(torch.backends, "mps", None)
    parts.append("MPS available" if mps is not None and mps.is_available() else "MPS not available")
    return Check("accelerators", Status.INFO, "; ".join(parts))


def check_openvino() -> Check:
    version = _version("openvino")
    if version is None:
        return Check(
            "openvino",
            Status.INFO,
            f"not installed (--backend openvino and --precision int8 need it: {install_hint('openvino')})",
        )
    return Check("openvino", Status.OK, f"{version} (--backend openvino available)")


def check_serve_extra() -> Check:
    missing = [p for p in ("flask", "uvicorn", "prometheus-client") if _version(p) is None]
    if missing:
        return Check(
            "serve extra",
            Status.INFO,
            f"not installed ({', '.join(missing)} missing): imgclassify serve needs "
            "pipx inject imgclassify flask uvicorn gunicorn prometheus-client",
        )
    return Check("serve extra", Status.OK, f"flask {_version('flask')}, uvicorn {_version('uvicorn')}")


def check_cpu() -> Check:
    from imgclassify.system.capabilities import cpu_description, cpu_features

    advice = "bf16 runs in hardware: try --precision bf16" if cpu_features().fast_bf16 else "no bf16 hardware"
    return Check("cpu", Status.INFO, f"{cpu_description()}; {advice}")


def _loaded_libraries() -> str:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except OSError:
        return ""


def check_allocator() -> Check:
    maps = _loaded_libraries()
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in maps or "tcmalloc" in preload:
        return Check("allocator", Status.OK, f"tcmalloc preloaded (LD_PRELOAD={preload})")
    if "jemalloc" in maps or "jemalloc" in preload:
        return Check("allocator", Status.OK, f"jemalloc preloaded (LD_PRELOAD={preload})")
    if not sys.platform.startswith("linux"):
        return Check("allocator", Status.INFO, "the system allocator (tuning applies to glibc on Linux only)")
    if os.environ.get("IMGCLASSIFY_NO_MALLOPT"):
        return Check("allocator", Status.WARN, "glibc malloc, untuned: IMGCLASSIFY_NO_MALLOPT is set")
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return Check("allocator", Status.INFO, f"{libc or 'unknown libc'}: malloc tuning needs glibc")
    return Check(
        "allocator",
        Status.OK,
        f"glibc {version} malloc, tuned by predict/serve at start (mallopt); tcmalloc not preloaded "
        "(LD_PRELOAD=libtcmalloc_minimal.so.4 adds 7-8% with --backend torch)",
    )


def check_weights() -> list[Check]:
    from imgclassify.models.registry import WeightsStatus, hub_checkpoints_dir, registry
    from imgclassify.system.paths import cache_dir

    specs = list(registry().values())
    status = {spec.name: spec.weights_status() for spec in specs}
    usable = [name for name, s in status.items() if s in (WeightsStatus.BUNDLED, WeightsStatus.CACHED)]
    missing = [name for name, s in status.items() if s is WeightsStatus.MISSING]
    cache = hub_checkpoints_dir()
    checks = [
        Check(
            "weights cache",
            Status.INFO,
            f"{cache} ({'exists' if cache.is_dir() else 'not created yet'}); imgclassify's own cache {cache_dir()}",
        ),
        Check(
            "offline models",
            Status.OK if usable else Status.FAIL,
            f"{len(usable)} of {len(specs)} work offline now: {', '.join(usable) or 'none'}"
            + ("" if usable else "; reinstall imgclassify (its bundled efficientnet_lite0 is missing)"),
        ),
    ]
    if missing:
        checks.append(Check("bundled weights", Status.FAIL, f"missing for {', '.join(missing)}; reinstall imgclassify"))
    return checks


def sample_image(width: int = 640, height: int = 427) -> bytes:
    """A deterministic RGB JPEG, 640x427 unless asked: gradients, a disc and noise (no file needed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    cx, cy, radius = width * 5 // 8, height * 200 // 427, width * 3 // 16  # (400, 200), 120 at 640x427
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < radius**2) * 90
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1) + disc[..., None]
    pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def check_parity(image: Path | None = None, model: str = "densenet121") -> Check:
    """imgclassify's decode + preprocess + normalization against torchvision's reference transforms.

    Two generated JPEGs (or ``image``): 640x427, decoded as by default (under twice the resize
    size: at full size) and resized with Pillow as torchvision does (limit PARITY_TOLERANCE), and
    LARGE_SAMPLE, decoded with ``--exact-decode`` (by default a JPEG of at least twice the resize
    size is decoded at reduced scale, whose pixels torchvision does not see) and resized on
    torch's uint8 antialiased kernels (limit PARITY_LEVELS levels); a file is held to the limit
    of the resize it takes. ``image`` is decoded with ``--exact-decode``.
    """
    import torch
    from PIL import Image, ImageOps
    from torchvision import transforms

    from imgclassify.decode.imaging import DecodeMode, DecodeOptions, load_tensor, uses_torch_resize
    from imgclassify.errors import ImgclassifyError
    from imgclassify.inference.normalize import Normalizer
    from imgclassify.models.registry import get_spec

    config = get_spec(model).preprocess
    exact = DecodeOptions(DecodeMode.EXACT)
    if image is not None:
        cases = [(f"{image} with --exact-decode", image.read_bytes(), exact)]
    else:
        large = f"a generated {LARGE_SAMPLE[0]}x{LARGE_SAMPLE[1]} JPEG with --exact-decode"
        cases = [
            ("a generated 640x427 JPEG", sample_image(), DecodeOptions()),
            (large, sample_image(*LARGE_SAMPLE), exact),
        ]
    reference: Callable[[Image.Image], torch.Tensor] = transforms.Compose(
        [
            transforms.Resize(
                config.resize_size, interpolation=transforms.InterpolationMode(config.interpolation.value)
            ),
            transforms.CenterCrop(config.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )
    std = torch.tensor(config.std).view(3, 1, 1)
    parts, ok = [], True
    for what, data, options in cases:
        try:
            ours = Normalizer(config, torch.device("cpu"), channels_last=False)(
                load_tensor(io.BytesIO(data), config, options).unsqueeze(0)
            )[0]
        except ImgclassifyError as exc:
            return Check("preprocessing parity", Status.FAIL, f"{what}: {exc}")
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        diff = (ours - reference(upright)).abs()
        if uses_torch_resize(upright.size, config):
            levels = diff * std * 255  # back in levels: the difference of the uint8 pixels
            worst = float(levels.max())
            ok = ok and worst <= PARITY_LEVELS + 1e-3
            share = float((levels > 0.5).float().mean())
            parts.append(
                f"{what} (torch's uint8 resize): {worst:.0f} level{'' if round(worst) == 1 else 's'} at most, "
                f"{share:.2%} of values differ (limit {PARITY_LEVELS} level)"
            )
        else:
            worst = float(diff.max())
            ok = ok and worst <= PARITY_TOLERANCE
            parts.append(f"{what} (Pillow's resize): max abs difference {worst:.2e} (limit {PARITY_TOLERANCE:g})")
    return Check(
        "preprocessing parity",
        Status.OK if ok else Status.FAIL,
        f"{model} preprocessing against torchvision's reference on {'; on '.join(parts)}: {'pass' if ok else 'FAIL'}",
    )


def run_checks(*, image: Path | None = None) -> list[Check]:
    """Every check, in a fixed order. A check that needs torch is skipped (failed) when torch is broken."""
    checks = [check_python(), check_torch()]
    torch_ok = checks[-1].status is Status.OK
    if torch_ok:
        checks.append(check_accelerators())
    checks += [check_openvino(), check_serve_extra(), check_cpu(), check_allocator(), *check_weights()]
    if torch_ok:
        checks.append(check_parity(image))
    return checks


def healthy(checks: list[Check]) -> bool:
    return all(check.status is not Status.FAIL for check in checks)


def print_table(checks: list[Check], ok: bool, console: Console | None = None) -> None:
    """The checks as a table, then one line: ``all checks passed`` or ``some checks failed``.

    On a terminal the table fits its width, details wrapped between words (a path is cut only
    when it alone is wider than the column). Into a file or a pipe nothing wraps: one line per
    check, every path whole. Every text is literal: ``[openvino]`` is no markup. ``console``:
    where to print (default: stdout, and a terminal's width or none).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # rich's default there is 80 columns (or $COLUMNS)
            console = Console(highlight=False, width=UNWRAPPED_WIDTH)
    table = Table(title="imgclassify doctor", box=None, pad_edge=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for check in checks:
        table.add_row(Text(check.name), Text(check.status.value), Text(check.detail))
    console.print(table)
    console.print("all checks passed" if ok else "some checks failed", markup=False, highlight=False)
