"""``RunSettings``: the numbers every engine's batches need, resolved once.

``predict`` checks what it was asked for before anything loads (:meth:`RunSettings.check`:
batch size, top-k, threshold, workers), then resolves them once the engine has started and the
device and the class count are known (:meth:`RunSettings.resolve`): the batch size the device
takes by default, the top-k against the model's classes. The engines, the writer and the
manifest all receive this one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgclassify.errors import UsageError

if TYPE_CHECKING:
    from imgclassify.system.storage import Storage


@dataclass(frozen=True)
class RunSettings:
    #: images per forward pass (resolved: never None)
    batch_size: int
    #: candidates per record
    top_k: int = 1
    #: records below it say ``confident: false`` (None: no threshold)
    threshold: float | None = None
    #: decode worker processes beside the model (None: the engine's default for the run's size)
    workers: int | None = None
    #: reads URL inputs (``--storage-option``); None: each filesystem's own configuration.
    #: Never compared or shown: its options may hold secrets
    storage: Storage | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def check(
        *, batch_size: int | None, top_k: int, threshold: float | None = None, workers: int | None = None
    ) -> None:
        """Every check that needs neither the model nor its device."""
        from imgclassify.decode.loading import check_batch_size
        from imgclassify.results.render import check_threshold

        check_batch_size(batch_size)
        if top_k < 1:
            raise UsageError(f"{{option}} must be at least 1, got {top_k}", option="top_k")
        if workers is not None and workers < 0:
            raise UsageError(f"{{option}} must be 0 or more, got {workers}", option="workers")
        check_threshold(threshold)

    @classmethod
    def resolve(
        cls,
        *,
        batch_size: int | None,
        top_k: int,
        threshold: float | None,
        workers: int | None,
        device: str,
        num_classes: int,
        storage: Storage | None = None,
    ) -> RunSettings:
        """The settings for a model loaded on ``device`` (``"cpu"``, ``"cuda:0"``) with ``num_classes``."""
        from imgclassify.decode.loading import resolve_batch_size
        from imgclassify.results.render import check_top_k

        cls.check(batch_size=batch_size, top_k=top_k, threshold=threshold, workers=workers)
        check_top_k(top_k, num_classes)
        return cls(resolve_batch_size(batch_size, device), top_k, threshold, workers, storage)
