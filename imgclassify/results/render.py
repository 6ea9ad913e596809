"""Rendering: class probabilities -> :class:`~imgclassify.results.records.Prediction` records.

The one place where probabilities become top-k candidates with labels, used by the CLI, the
Python API, the server and the Ray engine alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imgclassify.errors import UsageError
from imgclassify.models.labels import Labels
from imgclassify.results.records import Candidate, Prediction

if TYPE_CHECKING:
    import torch

#: probabilities are rounded to this many decimals in records (stable, readable output)
PROBABILITY_DECIMALS = 6


def check_threshold(threshold: float | None) -> None:
    """``--threshold P``: a probability, 0 <= P <= 1 (None: no threshold)."""
    if threshold is not None and not (0.0 <= threshold <= 1.0):  # also refuses NaN
        raise UsageError(
            f"{{option}} must be a probability from 0 to 1 (such as 0.5), got {threshold:g}", option="threshold"
        )


def judge(prediction: Prediction, threshold: float | None) -> Prediction:
    """``prediction`` with ``confident`` set: its top-1 probability is at least ``threshold``.

    No threshold, or a failed file: ``confident`` stays None. The class is kept either way.
    """
    if threshold is None or prediction.error is not None or not prediction.top:
        return prediction
    return replace(prediction, confident=prediction.top[0].probability >= threshold)


def check_top_k(top_k: int, num_classes: int) -> None:
    if not 1 <= top_k <= num_classes:
        raise UsageError(
            f"{{option}} must be between 1 and {num_classes} (the model's class count), got {top_k}", option="top_k"
        )


@dataclass(frozen=True)
class Renderer:
    """Top-k candidates with labels, for one model's labels; ``confident`` set when a ``threshold`` is given."""

    labels: Labels
    top_k: int = 1
    #: a record whose top-1 probability is below this says ``confident: false`` (None: no judgement)
    threshold: float | None = None
    #: sigmoid scores: with a threshold, every class at or above it is a candidate (at least the best)
    multi_label: bool = False

    def __post_init__(self) -> None:
        check_top_k(self.top_k, len(self.labels))
        check_threshold(self.threshold)

    @property
    def lists_candidates(self) -> bool:
        """Records carry a ``top_k`` list: k > 1, or multi-label classes above a threshold."""
        return self.top_k > 1 or (self.multi_label and self.threshold is not None)

    def candidates(self, probs: torch.Tensor) -> list[tuple[Candidate, ...]]:
        """One tuple of candidates per row of ``probs``, best first: the ``top_k`` best, or for a
        multi-label head with a threshold, every class at or above it (at least the best, at least k)."""
        labels = self.labels
        if self.multi_label and self.threshold is not None:
            above = (probs >= self.threshold).sum(dim=1)
            k = int(max(int(above.max()) if len(above) else 0, self.top_k))
            values, indices = probs.topk(min(k, len(labels)), dim=1)
            keep = [max(int(n), self.top_k) for n in above.tolist()]
            return [
                tuple(
                    Candidate(i, labels[i].wnid, labels[i].name, round(v, PROBABILITY_DECIMALS))
                    for v, i in zip(vals[:n], idxs[:n], strict=True)
                )
                for vals, idxs, n in zip(values.tolist(), indices.tolist(), keep, strict=True)
            ]
        values, indices = probs.topk(min(self.top_k, len(labels)), dim=1)
        return [
            tuple(
                Candidate(i, labels[i].wnid, labels[i].name, round(v, PROBABILITY_DECIMALS))
                for v, i in zip(vals, idxs, strict=True)
            )
            for vals, idxs in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def render(
        self, names: Sequence[str], probs: torch.Tensor | None, errors: Mapping[int, str] | None = None
    ) -> list[Prediction]:
        """One record per name, in order: ``errors[i]`` for a failed one, else the next row of ``probs``."""
        errors = errors or {}
        rows = iter(self.candidates(probs) if probs is not None else [])
        records = [
            Prediction(name, error=errors[i]) if i in errors else judge(Prediction(name, next(rows)), self.threshold)
            for i, name in enumerate(names)
        ]
        if next(rows, None) is not None:
            raise ValueError("more probability rows than images without an error")
        return records
