"""The embedding cache of ``imgclassify fit``: one vector per example file, keyed by the file's sha256.

One ``.safetensors`` file per backbone setting (``MODEL_DIR/embedding-cache/<key>.safetensors``,
or ``--cache-dir``): the key hashes what changes the vectors (the model, its weights' and files'
sha256, the preprocessing, the decode options, the precision), so a refit with more examples
embeds only the new files, and a refit on another backbone or preprocessing starts a cache of its
own. Written whole through a temporary file (a killed fit leaves the previous cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from imgclassify.system.digests import sha256_json
from imgclassify.system.fs import replaced_atomically

if TYPE_CHECKING:
    import numpy as np

    from imgclassify.models.plan import ModelPlan

#: the default cache folder's name inside MODEL_DIR
CACHE_FOLDER = "embedding-cache"


def cache_key(plan: ModelPlan) -> str:
    """What the vectors depend on, hashed (16 hex digits)."""
    from imgclassify.models.kinds.fitted import preprocess_to_dict

    options = plan.options
    return sha256_json(
        {
            "features": "pooled-1",
            "model": plan.spec.name,
            "kind": plan.kind.value,
            "weights_sha256": plan.weights_sha256,
            "files": [item["sha256"] for item in plan.describe_files()],
            "preprocess": preprocess_to_dict(plan.preprocess),
            "decode": {"mode": options.decode.mode.value, "allow_truncated": options.decode.allow_truncated},
            "precision": options.precision.value,
        }
    )[:16]


class EmbeddingCache:
    """sha256 -> float32 vector, read from and written to one file."""

    def __init__(self, folder: Path, key: str) -> None:
        self.path = folder / f"{key}.safetensors"
        self.vectors: dict[str, np.ndarray] = {}
        self.added = 0
        if self.path.is_file():
            from safetensors.numpy import load_file

            try:
                self.vectors = dict(load_file(str(self.path)))
            except Exception:  # a damaged cache is only a cache: start again
                self.vectors = {}

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.vectors

    def __getitem__(self, sha256: str) -> np.ndarray:
        return self.vectors[sha256]

    def add(self, sha256: str, vector: np.ndarray) -> None:
        self.vectors[sha256] = vector.astype("float32", copy=True)
        self.added += 1

    def save(self) -> None:
        """Write the cache when something was added (keys sorted: the same vectors, the same file)."""
        if not self.added:
            return
        from safetensors.numpy import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(self.path) as tmp:
            save_file({k: self.vectors[k] for k in sorted(self.vectors)}, str(tmp))
            os.chmod(tmp, 0o644)  # safetensors creates its file readable by its owner only
        self.added = 0
