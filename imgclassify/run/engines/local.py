"""The local engine: the classifier in this process, decode worker processes beside it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgclassify.models.plan import LabelSet, ModelPlan
    from imgclassify.pipeline import Classifier
    from imgclassify.results.records import Prediction
    from imgclassify.run.settings import RunSettings


class LocalEngine:
    #: a call costs a decode pool's start: the runner's own chunk sizes are fine
    min_chunk = 0

    @dataclass(frozen=True)
    class Settings:
        """The local engine has no options of its own."""

    @classmethod
    def from_settings(cls, plan: ModelPlan, settings: Settings, *, tune_process: bool = False) -> LocalEngine:
        return cls(plan, tune_process=tune_process)

    def __init__(self, plan: ModelPlan, *, tune_process: bool = False) -> None:
        self.plan = plan
        self.tune_process = tune_process
        self.classifier: Classifier | None = None
        self.decode_workers: int | None = None

    def start(self) -> None:
        if self.tune_process:
            from imgclassify.system.runtime import configure_threads

            configure_threads()
        from imgclassify.pipeline import build_classifier

        self.classifier = build_classifier(self.plan)

    @property
    def _loaded(self) -> Classifier:
        if self.classifier is None:
            raise RuntimeError("LocalEngine.start() was not called")
        return self.classifier

    @property
    def device(self) -> str:
        return str(self._loaded.device)

    @property
    def label_set(self) -> LabelSet:
        return self._loaded.label_set

    def batches(self, paths: Sequence[str], settings: RunSettings) -> Iterator[list[Prediction]]:
        from imgclassify.decode.loading import default_workers

        classifier = self._loaded
        workers = settings.workers
        if workers is None:
            workers = default_workers(len(paths), settings.batch_size, classifier.device.type, classifier.backend_kind)
        self.decode_workers = workers
        return classifier.predict_batches(
            paths, batch_size=settings.batch_size, top_k=settings.top_k, workers=workers, threshold=settings.threshold,
            storage=settings.storage,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "decode_workers": self.decode_workers, "backend": self._loaded.backend.name}

    def close(self) -> None:
        self.classifier = None
