"""The optional extras, one table: what each adds, and the install hint every error names.

The table restates ``[project.optional-dependencies]`` of ``pyproject.toml`` (a test compares
the two through the installed package's metadata) so that hints need no metadata at run time.
"""

from __future__ import annotations

#: extra -> the packages it installs (distribution names, as pip and pipx take them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino", "nncf"),
    "heif": ("pillow-heif",),
    "ray": ("ray[data]",),
    "serve": ("flask", "uvicorn", "gunicorn", "prometheus-client"),
    "onnx": ("onnxruntime", "onnx"),
    "hf": ("transformers",),
    "s3": ("s3fs",),
    "gcs": ("gcsfs",),
    "azure": ("adlfs",),
    "parquet": ("pyarrow",),
}


def install_hint(extra: str) -> str:
    """How to add ``extra`` to each kind of install: pipx, pip from PyPI, pip from a clone."""
    packages = " ".join(f"'{p}'" if "[" in p else p for p in EXTRAS[extra])
    return (
        f"pipx inject imgclassify {packages} (a pipx install); pip install 'imgclassify[{extra}]' "
        f"(pip, from PyPI) or pip install '.[{extra}]' (pip, in a clone of the repository)"
    )
