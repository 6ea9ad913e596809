"""Where imgclassify keeps what it makes once and reuses (converted and quantized models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$IMGCLASSIFY_CACHE``, else ``$XDG_CACHE_HOME/imgclassify``, else ``~/.cache/imgclassify``."""
    root = os.environ.get("IMGCLASSIFY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "imgclassify"
    )
    return Path(root)
