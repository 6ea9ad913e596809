"""Peak memory of decoding and preprocessing one image, measured in a fresh process.

    python scripts/peak_rss.py FILE... [--model efficientnet_lite0] [--max-pixels N] [--limit-mb MB]

Prints one JSON line: ``baseline_mb`` (peak RSS after importing torch and imgclassify, before
any image), ``peak_mb`` (peak RSS after the files, one after the other), ``image_mb`` (the
difference: what the costliest image cost), and ``results`` (per file, the tensor's shape or
the error). ``--limit-mb`` also caps the address space
(RLIMIT_AS) at the baseline's virtual size plus that many MB, so a regression fails fast with
a MemoryError instead of taking the machine down. The tests run this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def _vm_size_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--limit-mb", type=int, default=None)
    args = parser.parse_args(argv)

    import torch  # noqa: F401  (torch and torchvision belong to the baseline, not to the image)
    import torchvision.transforms.functional  # noqa: F401

    from imgclassify.decode.imaging import DEFAULT_MAX_PIXELS, DecodeOptions, load_tensor
    from imgclassify.errors import ImageError
    from imgclassify.models.registry import get_spec

    config = get_spec(args.model).preprocess
    options = DecodeOptions(max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.limit_mb is not None:
        limit = int((_vm_size_mb() + args.limit_mb) * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = []
    for file in args.files:
        try:
            results.append(str(tuple(load_tensor(file, config, options).shape)))
        except ImageError as exc:
            results.append(f"error: {exc}")
        except MemoryError:
            results.append("MemoryError")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {"baseline_mb": round(baseline, 1), "peak_mb": round(peak, 1), "image_mb": round(peak - baseline, 1)}
    print(json.dumps({**record, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
