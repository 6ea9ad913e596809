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
import importlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from imgclassify.models.plan import LabelSet, ModelPlan
    from imgclassify.results.records import Prediction
    from imgclassify.run.settings import RunSettings


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

    def batches(self, paths: Sequence[str], settings: RunSettings) -> Iterator[list[Prediction]]:
        """Records for ``paths`` in input order, a list at a time, with ``settings`` (resolved for
        :attr:`device`: :meth:`RunSettings.resolve`)."""

    #: the fewest inputs worth one :meth:`batches` call (the runner hands the listing over in
    #: chunks, the first of ``128 x batch`` inputs; an engine whose calls cost more asks for more)
    min_chunk: int

    def describe(self) -> dict[str, Any]:
        """The manifest's ``engine`` section (called at the start and again at the end)."""

    def close(self) -> None:
        """Release what :meth:`start` took (processes, a cluster connection)."""


#: each engine: its module, its class, which has a ``Settings`` dataclass (its own options) and
#: ``from_settings(plan, settings, *, tune_process)``
ENGINES: dict[EngineKind, tuple[str, str]] = {
    EngineKind.LOCAL: ("imgclassify.run.engines.local", "LocalEngine"),
    EngineKind.RAY: ("imgclassify.run.engines.ray", "RayEngine"),
}


def engine_class(kind: EngineKind) -> Any:
    module, name = ENGINES[kind]
    return getattr(importlib.import_module(module), name)


def create_engine(kind: EngineKind, plan: ModelPlan, settings: Any = None, *, tune_process: bool = False) -> Engine:
    """The engine for ``kind``; ``settings``: its ``Settings`` (None: the defaults)."""
    cls = engine_class(kind)
    if settings is None:
        settings = cls.Settings()
    elif not isinstance(settings, cls.Settings):
        raise TypeError(f"--engine {kind.value} takes {cls.Settings.__name__}, got {type(settings).__name__}")
    engine: Engine = cls.from_settings(plan, settings, tune_process=tune_process)
    return engine


__all__ = ["ENGINES", "Engine", "EngineKind", "create_engine", "engine_class"]
