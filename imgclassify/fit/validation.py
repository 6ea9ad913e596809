"""Cross-validation of a head: accuracy per category, the confusion matrix, and the threshold default.

Folds are fixed by the examples' order (sorted by category, then sha256): the i-th example of a
category goes to fold ``i mod folds``, so the same examples give the same folds. Each fold's
examples are predicted by a head fitted on the others.

The threshold: a record is ``confident`` when its top-1 probability is at least ``--threshold``.
It should be for a right prediction, and not for a wrong one nor for a photo of no category.
Photos of no category are simulated by leaving each category out in turn (a head fitted on the
others scores its examples; needs three categories). :func:`choose_threshold` takes the
probability that best separates right predictions from the rest (the largest mean of the share
kept and the share rejected), in the middle of the best range, to two decimals.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclassify.fit.heads import predictor

#: cross-validation folds (fewer when no category has that many examples)
FOLDS = 5


@dataclass
class CrossValidation:
    categories: list[str]
    folds: int
    truth: list[int]
    predicted: list[int]
    #: the top-1 probability of each held-out prediction
    probability: list[float]
    #: top-1 probabilities of examples scored by heads fitted without their category
    unknown: list[float] = field(default_factory=list)
    threshold: float | None = None

    @property
    def accuracy(self) -> float:
        return sum(t == p for t, p in zip(self.truth, self.predicted, strict=True)) / max(1, len(self.truth))

    def confusion(self) -> list[list[int]]:
        """``[true][predicted]`` counts."""
        size = len(self.categories)
        matrix = [[0] * size for _ in range(size)]
        for t, p in zip(self.truth, self.predicted, strict=True):
            matrix[t][p] += 1
        return matrix

    def per_category(self) -> list[dict[str, Any]]:
        rows = []
        for index, name in enumerate(self.categories):
            total = sum(t == index for t in self.truth)
            right = sum(t == index and p == index for t, p in zip(self.truth, self.predicted, strict=True))
            rows.append(
                {"category": name, "examples": total, "correct": right, "accuracy": right / total if total else None}
            )
        return rows

    @property
    def balanced_accuracy(self) -> float:
        shares = [float(row["accuracy"]) for row in self.per_category() if row["accuracy"] is not None]
        return sum(shares) / max(1, len(shares))

    def threshold_shares(self, threshold: float | None) -> dict[str, float | None]:
        """At ``threshold``: the share of right predictions kept confident, of wrong ones and of unknown photos rejected."""
        right = [p for t, q, p in zip(self.truth, self.predicted, self.probability, strict=True) if t == q]
        wrong = [p for t, q, p in zip(self.truth, self.predicted, self.probability, strict=True) if t != q]

        def share(values: list[float], keep: bool) -> float | None:
            if threshold is None or not values:
                return None
            return sum((v >= threshold) == keep for v in values) / len(values)

        return {
            "right_kept": share(right, True),
            "wrong_rejected": share(wrong, False),
            "unknown_rejected": share(self.unknown, False),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "accuracy": round(self.accuracy, 4),
            "balanced_accuracy": round(self.balanced_accuracy, 4),
            "per_category": [
                {**row, "accuracy": None if row["accuracy"] is None else round(row["accuracy"], 4)}
                for row in self.per_category()
            ],
            "confusion": {"categories": self.categories, "rows_true_columns_predicted": self.confusion()},
            "threshold": self.threshold,
            "at_threshold": {
                k: None if v is None else round(v, 4) for k, v in self.threshold_shares(self.threshold).items()
            },
            "unknown_scored": len(self.unknown),
        }


def folds_of(y: Sequence[int], folds: int) -> list[int]:
    """Each example's fold: its position among its category's examples, modulo ``folds``."""
    seen: dict[int, int] = {}
    out = []
    for label in y:
        position = seen.get(label, 0)
        seen[label] = position + 1
        out.append(position % folds)
    return out


def choose_threshold(right: Sequence[float], rest: Sequence[float]) -> float | None:
    """The probability that best keeps ``right`` (at or above it) and rejects ``rest`` (below it); None without both."""
    if not right or not rest:
        return None
    values = sorted(set(right) | set(rest))
    cuts = [values[0] / 2] + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [(values[-1] + 1) / 2]

    def score(cut: float) -> float:
        kept = sum(v >= cut for v in right) / len(right)
        rejected = sum(v < cut for v in rest) / len(rest)
        return kept + rejected

    scores = [score(cut) for cut in cuts]
    best = max(scores)
    at_best = [i for i, s in enumerate(scores) if s >= best - 1e-12]
    low, high = cuts[at_best[0]], cuts[at_best[-1]]
    return round((low + high) / 2, 2)


def cross_validate(
    kind: str, features: torch.Tensor, y: torch.Tensor, categories: Sequence[str], *, folds: int = FOLDS
) -> CrossValidation:
    """Held-out predictions for every example, the unknown-photo scores, and the threshold."""
    predict = predictor(kind)
    labels = [int(v) for v in y]
    counts = [labels.count(c) for c in range(len(categories))]
    folds = max(2, min(folds, max(counts)))
    fold = torch.tensor(folds_of(labels, folds))
    predicted = [0] * len(labels)
    probability = [0.0] * len(labels)
    for k in range(folds):
        test = (fold == k).nonzero().flatten()
        train = (fold != k).nonzero().flatten()
        if len(test) == 0 or len(train) == 0:
            continue
        probs = predict(features[train], y[train], len(categories), features[test])
        best = probs.max(dim=1)
        for i, p, v in zip(test.tolist(), best.indices.tolist(), best.values.tolist(), strict=True):
            predicted[i], probability[i] = p, v
    unknown: list[float] = []
    if len(categories) >= 3:
        for c in range(len(categories)):
            inside = (y == c).nonzero().flatten()
            others = (y != c).nonzero().flatten()
            remapped = y[others] - (y[others] > c).long()
            probs = predict(features[others], remapped, len(categories) - 1, features[inside])
            unknown += probs.max(dim=1).values.tolist()
    result = CrossValidation(list(categories), folds, labels, predicted, probability, unknown)
    right = [p for t, q, p in zip(labels, predicted, probability, strict=True) if t == q]
    rest = [p for t, q, p in zip(labels, predicted, probability, strict=True) if t != q] + unknown
    result.threshold = choose_threshold(right, rest)
    return result
