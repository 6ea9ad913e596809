"""Regenerate ``imgclassify/data/torchvision_models.json`` from the installed torchvision.

The table lets ``imgclassify models`` and the registry answer without importing torch
(start-up time), while ``tests/test_registry.py`` checks it still matches torchvision.

    python scripts/gen_torchvision_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torchvision
from torchvision import models

OUT = Path(__file__).resolve().parent.parent / "imgclassify" / "data" / "torchvision_models.json"


def describe(name: str) -> dict[str, object]:
    weights = models.get_model_weights(name).DEFAULT
    kw = dict(weights.transforms.keywords)
    interp = kw.get("interpolation", torchvision.transforms.InterpolationMode.BILINEAR)
    return {
        "weights": str(weights),
        "url": weights.url,
        "num_params": weights.meta["num_params"],
        "num_classes": len(weights.meta["categories"]),
        "crop_size": kw["crop_size"],
        "resize_size": kw.get("resize_size", 256),
        "interpolation": interp.value,
        "mean": list(kw.get("mean", (0.485, 0.456, 0.406))),
        "std": list(kw.get("std", (0.229, 0.224, 0.225))),
        "acc1": weights.meta["_metrics"]["ImageNet-1K"]["acc@1"],
    }


def main() -> None:
    table = {name: describe(name) for name in sorted(models.list_models(module=models))}
    payload = {"torchvision": torchvision.__version__.split("+")[0], "models": table}
    OUT.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(table)} models to {OUT}")


if __name__ == "__main__":
    main()
