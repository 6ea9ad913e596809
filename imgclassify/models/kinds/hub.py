"""``hf:ORG/REPO[@REVISION]``: a Hugging Face Hub repository, through ``huggingface_hub``'s cache.

Only configuration and weights files are fetched (``*.json``, ``*.safetensors``; a
``pytorch_model.bin`` only when the repository has no safetensors). Offline (``--offline``,
``IMGCLASSIFY_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) the cache alone is used. No code from a
repository is ever run (``trust_remote_code`` is never set).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imgclassify.errors import UnknownModelError, WeightsUnavailableError

if TYPE_CHECKING:
    from imgclassify.models.kinds.base import ModelRef
    from imgclassify.options import ModelOptions

_PATTERNS = ["*.json", "*.safetensors"]


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline(options: ModelOptions) -> bool:
    """Downloads are off: ``--offline``, ``IMGCLASSIFY_OFFLINE=1``, or ``HF_HUB_OFFLINE=1`` (read now,
    not only when huggingface_hub was imported)."""
    import os

    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    return not options.allow_download or bool(constants.HF_HUB_OFFLINE) or flag


def snapshot(ref: ModelRef, options: ModelOptions, *, progress: bool = False) -> Path:
    """The local folder of ``ref``'s repository at its revision (downloaded when allowed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline(options)
    where = f"{ref.target}@{ref.revision}" if ref.revision else ref.target
    try:
        folder = Path(
            snapshot_download(ref.target, revision=ref.revision, allow_patterns=_PATTERNS, local_files_only=offline)
        )
        from imgclassify.models.kinds.base import weights_file_in

        if weights_file_in(folder) is None:  # an older repository: pickled weights only
            folder = Path(
                snapshot_download(
                    ref.target, revision=ref.revision, allow_patterns=["pytorch_model.bin"], local_files_only=offline
                )
            )
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise UnknownModelError(
            f"--model {ref.text}: the Hub has no repository {ref.target} you can read ({type(exc).__name__}); "
            "check the name, or log in with `hf auth login` for a private one"
        ) from None
    except RevisionNotFoundError:
        raise UnknownModelError(f"--model {ref.text}: {ref.target} has no revision {ref.revision!r}") from None
    except LocalEntryNotFoundError:
        reason = "downloads are off" if offline else "it could not be downloaded"
        raise WeightsUnavailableError(
            f"--model {ref.text}: {where} is not in the Hugging Face cache ({hub_cache_dir()}) and {reason}. "
            "Fixes: run once with network access (without --offline, HF_HUB_OFFLINE unset) to fill the cache; "
            "or download the repository (hf download REPO) and pass its folder as --model",
            reason=f"{where} not in the Hugging Face cache",
        ) from None
    except OSError as exc:  # connection errors
        raise WeightsUnavailableError(
            f"--model {ref.text}: cannot download {where} ({exc}); run with network access once, or pass a "
            "local folder as --model",
            reason=f"cannot download {where}",
        ) from None
    return folder
