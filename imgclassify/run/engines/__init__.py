"""Engines: where a ``predict`` run's batches are classified. The runner is the same for all.

An engine receives the :class:`~imgclassify.models.plan.ModelPlan` and the list of paths, and
yields lists of :class:`~imgclassify.results.records.Prediction` records in input order; the runner
writes them, counts them, shows progress, stops on ``--max-failures`` or a signal, and keeps
the manifest. ``local`` runs in this process (with decode worker processes); other engines
(a Ray cluster) are one module each, picked in :func:`create_engine`.

Importing this package does not import torch.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from imgclassify.models.plan import LabelSet, ModelPlan
    from imgclassify.results.records import Prediction


class EngineKind(str, enum.Enum):
    """``--engine``."""

    LOCAL = "local"
    RAY = "ray"


class Engine(Protocol):
    @property
    def device(self) -> str:
        """What the model runs on, as the manifest records it ("cpu", "cuda:0")."""

    @property
    def label_set(self) -> LabelSet:
        """The labels the records carry (known once :meth:`start` loaded the model)."""

    def start(self) -> None:
        """Load the model (or start the workers that will): every check that can fail early."""

    def batches(
        self, paths: Sequence[str], *, batch_size: int | None, top_k: int, workers: int | None
    ) -> Iterator[list[Prediction]]:
        """Records for ``paths`` in input order, a list at a time.

        ``batch_size`` None: the default for :attr:`device` (:func:`~imgclassify.decode.loading.resolve_batch_size`).
        """

    def describe(self) -> dict[str, Any]:
        """The manifest's ``engine`` section (called at the start and again at the end)."""

    def close(self) -> None:
        """Release what :meth:`start` took (processes, a cluster connection)."""


def create_engine(kind: EngineKind, plan: ModelPlan, **settings: Any) -> Engine:
    """The engine for ``kind``; ``settings`` are the engine's own options."""
    if kind is EngineKind.RAY:
        from imgclassify.run.engines.ray import RayEngine

        return RayEngine(plan, **settings)
    from imgclassify.run.engines.local import LocalEngine

    return LocalEngine(plan, **settings)


__all__ = ["Engine", "EngineKind", "create_engine"]
