"""``imgclassify models``: the rows it lists, with ``--search``, from the registry and timm.

Without ``--search`` only the registry is read (no torch, no timm: instant). With it, the
registry names containing the text and timm's pretrained models whose name contains it (as
``timm:NAME.TAG``, their input size from timm's ``pretrained_cfg``, and whether their weights
are in the Hugging Face cache; models without a classifier head left out), in that order, each
part sorted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelRow:
    name: str
    #: millions of parameters (None: not known without building the model)
    params_m: float | None
    input_size: int
    #: ImageNet-1k top-1 published for these weights
    top1: float | None
    #: bundled, cached, needs download, missing
    weights: str
    #: registry or timm
    source: str = "registry"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_models(search: str | None = None, *, limit: int | None = None) -> list[ModelRow]:
    """The registry's models (those whose name contains ``search``), then timm's when searching."""
    from imgclassify.models.registry import registry

    text = (search or "").strip().lower()
    rows = [
        ModelRow(
            spec.name,
            round(spec.num_params / 1e6, 1),
            spec.preprocess.crop_size,
            spec.top1,
            spec.weights_status().value,
        )
        for spec in registry().values()
        if text in spec.name
    ]
    if search is not None:
        rows += _timm_rows(text)
    return rows[:limit] if limit is not None else rows


def _timm_rows(text: str) -> list[ModelRow]:
    import timm
    from timm.models import get_pretrained_cfg

    pattern = f"*{text}*" if not any(c in text for c in "*?[") else text
    names = timm.list_models(pattern, pretrained=True)  # sorted; tags match too (in22k)
    rows = []
    for name in names:
        cfg = get_pretrained_cfg(name)
        if cfg is not None and not cfg.num_classes:
            continue  # a feature extractor, no classifier head
        size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
        rows.append(ModelRow(f"timm:{name}", None, size, None, _cached(cfg), source="timm"))
    return rows


def _cached(cfg: Any) -> str:
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return "needs download"
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return "cached"
    return "needs download"
