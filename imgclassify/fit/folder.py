"""Writing the model folder of a fit (read back by :mod:`imgclassify.models.kinds.fitted`).

``head.safetensors`` and ``imgclassify_head.json`` depend only on the examples (their sha256, in
order), the backbone and the head's settings, so the same examples give the same two files byte
for byte; ``fit_manifest.json`` adds what changes from run to run (times, the command, paths).
The three are committed together, the marker (``imgclassify_head.json``) last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import UsageError
from imgclassify.models.kinds.fitted import CONFIG_NAME, FIT_MANIFEST_NAME, HEAD_FORMAT, HEAD_NAME, preprocess_to_dict
from imgclassify.system.fs import replaced_together

if TYPE_CHECKING:
    from imgclassify.fit.heads import Head
    from imgclassify.models.plan import ModelPlan

#: what else may be in a folder a fit may write into
_OURS = {CONFIG_NAME, HEAD_NAME, FIT_MANIFEST_NAME}


def check_output(folder: Path, examples: Path) -> None:
    """MODEL_DIR: missing, empty, or a fitted model's folder (refitted); never a category of EXAMPLES_DIR."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {folder} is a file: give the folder to write the model into")
    if folder.resolve().parent == examples.resolve() and not folder.name.startswith("."):
        raise UsageError(f"--output {folder} is inside {examples}, where it would be read as a category")
    if folder.is_dir() and not (folder / CONFIG_NAME).is_file():
        others = [name for name in os.listdir(folder) if name not in _OURS and not name.startswith(".")]
        others = [name for name in others if not (folder / name).is_dir() or name != "embedding-cache"]
        if others:
            raise UsageError(
                f"--output {folder} holds other files ({', '.join(sorted(others)[:3])}): give a new or empty folder, "
                "or the folder of an earlier fit"
            )
    parent = folder.parent if str(folder.parent) else Path(".")
    if not folder.exists() and not parent.is_dir():
        raise UsageError(f"--output {folder}: the folder {parent} does not exist; create it first")


def backbone_reference(text: str) -> str:
    """How the folder names its backbone: as given, but an existing path made absolute."""
    from imgclassify.models.kinds import parse_reference

    ref = parse_reference(text)
    return str(Path(ref.target).resolve()) if ref.scheme == "path" else text.strip()


def head_config(
    *, categories: list[str], backbone: ModelPlan, reference: str, head: Head, dim: int, threshold: float | None,
    examples: int, examples_sha256: str, settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {
        "imgclassify_head": HEAD_FORMAT,
        "categories": categories,
        "backbone": {
            "model": reference,
            "name": backbone.spec.name,
            "kind": backbone.kind.value,
            "architecture": backbone.spec.architecture,
            "weights_sha256": backbone.weights_sha256,
            "features": dim,
        },
        "head": {
            "type": head.kind,
            "file": HEAD_NAME,
            "rows": len(head.members),
            "scale": head.scale,
            "power": head.power,
            **settings,
        },
        "preprocessing": preprocess_to_dict(backbone.preprocess),
        "threshold": threshold,
        "examples": {"count": examples, "sha256": examples_sha256},
    }


def write_folder(folder: Path, head: Head, config: dict[str, Any], manifest: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": head.weight.to(torch.float32).contiguous(),
        "members": head.members.to(torch.int64).contiguous(),
        "bias": head.bias.to(torch.float32).contiguous(),
        "center": head.center.to(torch.float32).contiguous(),
    }
    paths = [folder / HEAD_NAME, folder / FIT_MANIFEST_NAME, folder / CONFIG_NAME]
    with replaced_together(paths, fsync=True) as (head_tmp, manifest_tmp, config_tmp):
        save_file(tensors, str(head_tmp))
        os.chmod(head_tmp, 0o644)  # safetensors creates its file readable by its owner only
        manifest_tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        config_tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
