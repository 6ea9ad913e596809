"""timm models: ``timm:NAME[.TAG]``, and folders or Hub repositories in timm's layout.

The model's ``pretrained_cfg`` gives the preprocessing (input size, ``crop_pct``, interpolation,
mean and std), the class count and, when it has them, the label names (ImageNet-22k/12k names come
from timm's own tables). Weights: ``--weights`` (``.safetensors`` or a state dict), else timm's
pretrained file in the Hugging Face cache (or the torch hub cache for the older URL weights),
downloaded only when allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import CheckpointError, UnknownModelError, WeightsUnavailableError
from imgclassify.models.kinds.base import LoadedModel, ModelKind, ModelRef, Resolved, WeightsSource, weights_file_in

if TYPE_CHECKING:
    from imgclassify.models.labels import LabelSet
    from imgclassify.models.plan import ModelPlan
    from imgclassify.options import ModelOptions


def preprocess_from_cfg(cfg: dict[str, Any]) -> Any:
    """timm's data config -> :class:`PreprocessConfig` (shorter side to ``crop / crop_pct``, center crop)."""
    from imgclassify.decode.preprocess import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PreprocessConfig

    size = cfg.get("input_size") or (3, 224, 224)
    crop = int(size[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = str(cfg.get("interpolation") or "bicubic")
    known = {i.value for i in Interpolation}
    return PreprocessConfig(
        resize_size=math.floor(crop / crop_pct),
        crop_size=crop,
        interpolation=Interpolation(interpolation if interpolation in known else "bicubic"),
        mean=tuple(float(v) for v in (cfg.get("mean") or IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in (cfg.get("std") or IMAGENET_STD)),  # type: ignore[arg-type]
    )


def _label_set(cfg: dict[str, Any], num_classes: int, names: Any = None) -> LabelSet | None:
    """The model's own class names: its ``label_names``, or timm's ImageNet-22k/12k tables (1k: the bundled file)."""
    from imgclassify.models.labels import Label, LabelSet, LabelsSource

    names = names or cfg.get("label_names")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        descriptions = cfg.get("label_descriptions") or {}
        return LabelSet(tuple(Label(str(n) if str(n).startswith("n") and str(n)[1:].isdigit() else None,
                                    str(descriptions.get(n, n)) if isinstance(descriptions, dict) else str(n))
                              for n in names), LabelsSource.MODEL)  # fmt: skip
    if num_classes == 1000:
        return None  # the bundled ImageNet-1k labels
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset  # type: ignore[attr-defined]
    except ImportError:
        return None
    subset = infer_imagenet_subset(cfg)
    if subset is None or subset == "imagenet-1k":
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != num_classes:  # type: ignore[no-untyped-call]
        return None
    return LabelSet(
        tuple(Label(info.index_to_label_name(i), info.index_to_description(i)) for i in range(num_classes)),
        LabelsSource.MODEL,
    )


def _spec(name: str, architecture: str, num_classes: int, cfg: dict[str, Any]) -> Any:
    from imgclassify.models.registry import ModelSpec

    return ModelSpec(
        name=name, family="timm", architecture=architecture, num_params=0, num_classes=num_classes,
        preprocess=preprocess_from_cfg(cfg),
    )  # fmt: skip


def resolve(ref: ModelRef, options: ModelOptions, *, progress: bool = False) -> Resolved:
    import timm
    from timm.models import get_pretrained_cfg

    name = ref.target
    architecture = name.partition(".")[0]
    if not timm.is_model(architecture):
        import difflib

        names = timm.list_models()
        close = [n for n in names if n.startswith(architecture)][:5] or difflib.get_close_matches(
            architecture, names, 5
        )
        hint = f" Did you mean: {', '.join('timm:' + c for c in close)}?" if close else ""
        raise UnknownModelError(
            f"timm has no model {architecture!r}.{hint} `imgclassify models --search TEXT` lists them."
        )
    try:
        cfg_object = get_pretrained_cfg(name, allow_unregistered=False) if "." in name else get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg_object = None
    if cfg_object is None:
        tags = timm.list_pretrained(f"{architecture}.*")[:8]
        raise UnknownModelError(
            f"timm has no pretrained tag {name!r}; {architecture}'s tags: {', '.join(tags) or 'none'}"
        )
    cfg: dict[str, Any] = cfg_object.to_dict()  # type: ignore[no-untyped-call]
    full_name = f"{architecture}.{cfg['tag']}" if cfg.get("tag") else architecture
    num_classes = int(cfg.get("num_classes") or 1000)
    source: dict[str, Any] = {"name": full_name, "hf_hub_id": cfg.get("hf_hub_id")}
    if options.weights is not None:
        weights, weights_source = options.weights, WeightsSource.FILE
    else:
        weights, weights_source = _pretrained_file(ref, cfg, options, progress=progress), WeightsSource.CACHE
    return Resolved(
        kind=ModelKind.TIMM, spec=_spec(f"timm:{full_name}", architecture, num_classes, cfg),
        weights_path=weights, weights_source=weights_source, source=source,
        model_labels=_label_set(cfg, num_classes),
        extra={"architecture": architecture, "name": full_name, "model_args": {}},
    )  # fmt: skip


def _pretrained_file(ref: ModelRef, cfg: dict[str, Any], options: ModelOptions, *, progress: bool) -> Path:
    """timm's pretrained weights for ``cfg``: the Hugging Face cache, then the torch hub cache (URL weights)."""
    from imgclassify.models.kinds.hub import hub_cache_dir, hub_offline
    from imgclassify.models.registry import hub_checkpoints_dir

    hub_id = cfg.get("hf_hub_id")
    tried = []
    allow_download = not hub_offline(options)
    if hub_id:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return Path(cached)
        tried.append(f"{hub_id} in the Hugging Face cache ({hub_cache_dir()})")
        if allow_download:
            for filename in names:
                try:
                    return Path(hf_hub_download(hub_id, filename))
                except Exception:  # not in the repository, no network: try the next
                    continue
    url = cfg.get("url")
    if url:
        path: Path = hub_checkpoints_dir() / str(url).rsplit("/", 1)[-1]
        if path.is_file():
            return path
        tried.append(str(path))
        if allow_download:
            from imgclassify.models.weights import download

            try:
                download(url, path, progress=progress)
                return path
            except WeightsUnavailableError:
                pass
    if not tried:
        raise WeightsUnavailableError(
            f"{ref.text}: timm has no pretrained weights for it; pass --weights FILE (.safetensors or a state dict)",
            reason="no pretrained weights",
        )
    reason = "downloads are off" if not allow_download else "the download failed"
    raise WeightsUnavailableError(
        f"{ref.text}: pretrained weights not found ({'; '.join(tried)}) and {reason}. Fixes: pass --weights FILE "
        "(.safetensors or a state dict); or run once with network access to fill the cache",
        reason="weights not in the cache",
    )


def resolve_folder(
    ref: ModelRef, folder: Path, config: dict[str, Any], options: ModelOptions, *, source: dict[str, Any]
) -> Resolved:
    """A folder in timm's layout: config.json (``architecture``, ``num_classes``, ``pretrained_cfg``,
    ``label_names``, ``model_args``) and model.safetensors (or pytorch_model.bin)."""
    import timm

    architecture = str(config["architecture"])
    if not timm.is_model(architecture):
        raise UnknownModelError(f"--model {ref.text}: timm has no architecture {architecture!r} (config.json)")
    cfg = dict(config.get("pretrained_cfg") or {})
    num_classes = int(config.get("num_classes") or cfg.get("num_classes") or 1000)
    weights = options.weights or weights_file_in(folder)
    if weights is None:
        raise CheckpointError(f"--model {ref.text}: {folder} has no model.safetensors or pytorch_model.bin")
    names = config.get("label_names") or cfg.get("label_names")
    return Resolved(
        kind=ModelKind.TIMM, spec=_spec(ref.text, architecture, num_classes, cfg), weights_path=Path(weights),
        weights_source=WeightsSource.FILE, source=source, files=(folder / "config.json",),
        model_labels=_label_set(cfg, num_classes, names),
        extra={
            "architecture": architecture, "model_args": dict(config.get("model_args") or {}),
            "pretrained_cfg": cfg or None,
        },
    )  # fmt: skip


def load(plan: ModelPlan) -> LoadedModel:
    import timm

    from imgclassify.models.weights import read_state_dict

    architecture = plan.extra["architecture"]
    state = read_state_dict(plan.weights_path)

    def create(num_classes: int) -> Any:
        # the tag's own pretrained_cfg (a fixed input size changes the model), and a folder's model_args,
        # whose num_classes (save_for_hf writes it) gives way to the checkpoint's
        args = {**plan.extra["model_args"], "num_classes": num_classes}
        if plan.extra.get("pretrained_cfg"):
            import dataclasses

            from timm.models import PretrainedCfg

            known = {f.name for f in dataclasses.fields(PretrainedCfg)}
            args["pretrained_cfg"] = {k: v for k, v in plan.extra["pretrained_cfg"].items() if k in known}
        return timm.create_model(plan.extra.get("name", architecture), pretrained=False, **args)

    num_classes = plan.spec.num_classes
    probe = create(num_classes)
    head = getattr(probe, "pretrained_cfg", {}).get("classifier")
    heads = head if isinstance(head, (list, tuple)) else [head] if head else []
    for name in heads:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 1 and int(weight.shape[0]) != num_classes:
            num_classes = int(weight.shape[0])
            probe = create(num_classes)
            break
    try:
        probe.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"the weights {plan.weights_path} do not fit timm's {architecture}: {detail}") from None
    return LoadedModel(num_classes=num_classes, net=probe.eval())
