"""The heads ``imgclassify fit`` can learn on pooled features, in float64 on one CPU thread (deterministic).

Every head sees the features made comparable first (:func:`prepare`): a signed power
(``power`` 0.5: the signed square root, which evens out a few large activations), minus the
training examples' mean, L2-normalized. Then:

* ``nearest``: the nearest example by cosine: each category's logit is ``scale`` times the
  similarity of its most similar example (1-NN; categories made of several kinds of photo keep
  each kind);
* ``logistic``: multinomial logistic regression, class-balanced and L2-penalized
  (:data:`DEFAULT_L2`), solved by L-BFGS from zero to a fixed tolerance: a linear layer;
* ``centroid``: the nearest prototype by cosine: each category's mean direction, times ``scale``;
* ``knn``: the k nearest examples' similarity-weighted votes; measured (``benchmarks/fit_heads.py``)
  but never written to a model folder.

What a model folder holds is one form for the written three (:class:`Head`, run by
:class:`~imgclassify.models.features.FittedNet`): rows ``weight`` [M, features], each row's
category ``members`` [M], ``bias`` [categories]; logit k = ``scale`` * max over the rows of
category k of (row . prepared features) + bias k. A linear head has one row per category.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: the heads a model folder can hold (``--head``), the default first: chosen by measurement (docs/fit.md)
WRITABLE_HEADS = ("nearest", "logistic", "centroid")
#: every head that can be measured
HEADS = (*WRITABLE_HEADS, "knn")
#: the logistic head's L2 penalty: mean class-balanced cross-entropy + DEFAULT_L2 / 2 * |W|^2
DEFAULT_L2 = 0.1
#: the similarity heads' (nearest, centroid) logit scale: softmax(SCALE * cosine)
SCALE = 16.0
#: the signed power applied to every feature first (0.5: signed square root; 1: none)
POWER = 0.5
#: neighbours of the kNN head
KNN_K = 5


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread while the block runs: the same sums in the same order on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def signed_power(features: torch.Tensor, power: float) -> torch.Tensor:
    x = features.double()
    return x if power == 1.0 else x.sign() * x.abs().pow(power)


def prepare(features: torch.Tensor, center: torch.Tensor, power: float) -> torch.Tensor:
    """Signed power, centred, L2-normalized float64 features."""
    return torch.nn.functional.normalize(signed_power(features, power) - center.double(), dim=1)


@dataclass
class Head:
    """A written head (see the module's docstring); tensors in float64 until written."""

    kind: str
    weight: torch.Tensor
    members: torch.Tensor
    bias: torch.Tensor
    center: torch.Tensor
    scale: float
    power: float

    @property
    def categories(self) -> int:
        return len(self.bias)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        similarity = prepare(features, self.center, self.power) @ self.weight.T  # (N, M)
        mask = torch.full((self.categories, len(self.members)), float("-inf"), dtype=torch.float64)
        mask[self.members, torch.arange(len(self.members))] = 0.0
        best = (similarity.unsqueeze(1) + mask).amax(dim=2)  # (N, categories)
        return self.scale * best + self.bias

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=1)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, categories: int, *, l2: float = DEFAULT_L2, balanced: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-penalized multinomial logistic regression on prepared features ``x``.

    ``balanced``: every category weighs the same in the loss, however many examples it has (else
    the bias learns the examples' proportions, and a new photo leans to the largest category)."""
    counts = torch.bincount(y, minlength=categories).double()
    class_weight = (counts.sum() / (categories * counts.clamp(min=1))) if balanced else None
    weight = torch.zeros(categories, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(categories, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=500, history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits, y, weight=class_weight) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach(), bias.detach()


def fit_head(
    kind: str,
    features: torch.Tensor,
    y: torch.Tensor,
    categories: int,
    *,
    l2: float = DEFAULT_L2,
    balanced: bool = True,
    scale: float = SCALE,
    power: float = POWER,
    centred: bool = True,
) -> Head:
    """A written head (``nearest``, ``logistic`` or ``centroid``) fitted on raw features (N, D) and labels ``y``.

    The keywords' defaults are what the measurement chose (docs/fit.md)."""
    with one_thread(), torch.enable_grad():
        powered = signed_power(features, power)
        center = powered.mean(dim=0) if centred else torch.zeros(features.shape[1], dtype=torch.float64)
        x = prepare(features, center, power)
        no_bias = torch.zeros(categories, dtype=torch.float64)
        if kind == "nearest":
            return Head(kind, x, y.clone().long(), no_bias, center, scale, power)
        rows = torch.arange(categories)
        if kind == "logistic":
            weight, bias = fit_logistic(x, y, categories, l2=l2, balanced=balanced)
            return Head(kind, weight, rows, bias, center, 1.0, power)
        if kind == "centroid":
            sums = torch.zeros(categories, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
            return Head(kind, torch.nn.functional.normalize(sums, dim=1), rows, no_bias, center, scale, power)
    raise ValueError(f"no such head {kind!r}; the heads are {', '.join(WRITABLE_HEADS)}")


def knn_probabilities(
    train: torch.Tensor,
    y: torch.Tensor,
    categories: int,
    test: torch.Tensor,
    *,
    k: int = KNN_K,
    power: float = POWER,
    centred: bool = True,
) -> torch.Tensor:
    """kNN class shares: the ``k`` most similar training examples' similarities (clipped at 0), summed per category."""
    with one_thread():
        powered = signed_power(train, power)
        center = powered.mean(dim=0) if centred else torch.zeros(train.shape[1], dtype=torch.float64)
        similarity = prepare(test, center, power) @ prepare(train, center, power).T
        values, indices = similarity.topk(min(k, len(train)), dim=1)
        votes = torch.zeros(len(test), categories, dtype=torch.float64)
        votes.scatter_add_(1, y[indices], values.clamp(min=0) + 1e-9)
        return votes / votes.sum(dim=1, keepdim=True)


def predictor(kind: str, **settings: Any) -> Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]:
    """``(train features, train labels, categories, test features) -> test probabilities`` for any head;
    ``settings``: :func:`fit_head`'s (or :func:`knn_probabilities`') keywords."""
    if kind == "knn":
        return lambda train, y, categories, test: knn_probabilities(train, y, categories, test, **settings)

    def predict(train: torch.Tensor, y: torch.Tensor, categories: int, test: torch.Tensor) -> torch.Tensor:
        head = fit_head(kind, train, y, categories, **settings)
        with one_thread():
            return head.probabilities(test)

    return predict
