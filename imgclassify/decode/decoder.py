"""Decoding one file, and the batches files become: :class:`Decoder` (path or bytes -> the
model's uint8 tensor, or an error string), :class:`Batch`, :func:`collate`. All of it pickles.

The loaders (:mod:`imgclassify.decode.loading`) and the crash-surviving worker pool
(:mod:`imgclassify.decode.worker_crashes`) both build on these.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from imgclassify.decode.imaging import DecodeOptions, load_tensor
from imgclassify.decode.preprocess import PreprocessConfig
from imgclassify.errors import ImageError

if TYPE_CHECKING:
    import torch

Source = str | os.PathLike[str] | bytes | IO[bytes]


@dataclass(frozen=True)
class Decoder:
    """Read + decode + preprocess one image with a model's preprocessing and the decode options."""

    preprocess: PreprocessConfig
    options: DecodeOptions = field(default_factory=DecodeOptions)

    def __call__(self, source: Source) -> torch.Tensor:
        """A uint8 CHW tensor, or an :class:`~imgclassify.errors.ImageError`."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not source:
                raise ImageError("empty file")
            source = io.BytesIO(source)
        return load_tensor(source, self.preprocess, self.options)

    def try_decode(self, source: Source) -> tuple[torch.Tensor | None, str | None]:
        """``(tensor, None)`` or ``(None, reason)``: never raises for a bad file."""
        try:
            return self(source), None
        except ImageError as exc:
            return None, str(exc)
        except Exception as exc:  # a decoder bug must stay with its file
            return None, f"cannot decode image: {type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class DecodedItem:
    index: int
    tensor: Any  # torch.Tensor | None
    error: str | None


@dataclass
class Batch:
    """A collated batch: the good images stacked (uint8 NCHW), the failures by index."""

    indices: list[int]
    tensor: Any  # torch.Tensor | None: rows for the indices without an error, in order
    errors: dict[int, str]

    def pin_memory(self) -> Batch:  # called by DataLoader's pinning thread (CUDA)
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()
        return self

    @property
    def good_indices(self) -> list[int]:
        return [i for i in self.indices if i not in self.errors]


class FileDataset:
    """Map-style dataset over paths; a failure is returned as data, never raised."""

    def __init__(self, paths: Sequence[str], decoder: Decoder) -> None:
        self.paths = paths
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedItem:
        tensor, error = self.decoder.try_decode(self.paths[index])
        return DecodedItem(index, tensor, error)


def collate(items: list[DecodedItem]) -> Batch:
    import torch

    good = [item.tensor for item in items if item.tensor is not None]
    return Batch(
        indices=[item.index for item in items],
        tensor=torch.stack(good) if good else None,
        errors={item.index: item.error for item in items if item.error is not None},
    )
