"""The heads ``imgclassify fit`` can learn on pooled features, in float64 on one CPU thread (deterministic).

Every head sees the features centred (minus the training examples' mean) and L2-normalized:

* ``logistic``: multinomial logistic regression, L2-penalized (:data:`DEFAULT_L2`), solved by
  L-BFGS from zero to a fixed tolerance: one logit per category, a linear layer;
* ``centroid``: the nearest prototype by cosine: each category's mean direction, scaled by
  :data:`CENTROID_SCALE` (a softmax temperature), also a linear layer;
* ``knn``: the k nearest examples by cosine, similarity-weighted votes; not a linear layer, so it
  is measured (``benchmarks/fit_heads.py``) but never written to a model folder.

The written heads are :class:`LinearHead`: ``weight`` [categories, features], ``bias``, ``center``,
what :class:`~imgclassify.models.features.FittedNet` runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: the heads a model folder can hold (``--head``), the default first
WRITABLE_HEADS = ("logistic", "centroid")
#: every head that can be measured
HEADS = (*WRITABLE_HEADS, "knn")
#: the logistic head's L2 penalty on the weights (mean cross-entropy + DEFAULT_L2 / 2 * |W|^2),
#: measured with benchmarks/fit_heads.py (docs/fit.md)
DEFAULT_L2 = 1e-3
#: the prototype head's logit scale: softmax(CENTROID_SCALE * cosine)
CENTROID_SCALE = 16.0
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


def prepare(features: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Centred, L2-normalized float64 features."""
    return torch.nn.functional.normalize(features.double() - center.double(), dim=1)


@dataclass
class LinearHead:
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    center: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return prepare(features, self.center) @ self.weight.T + self.bias

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, categories: int, *, l2: float = DEFAULT_L2) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-penalized multinomial logistic regression on prepared features ``x``."""
    weight = torch.zeros(categories, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(categories, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=500, history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach(), bias.detach()


def fit_centroid(
    x: torch.Tensor, y: torch.Tensor, categories: int, *, scale: float = CENTROID_SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each category's mean direction of prepared features ``x``, times ``scale``; no bias."""
    sums = torch.zeros(categories, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
    return scale * torch.nn.functional.normalize(sums, dim=1), torch.zeros(categories, dtype=torch.float64)


def fit_head(
    kind: str,
    features: torch.Tensor,
    y: torch.Tensor,
    categories: int,
    *,
    l2: float = DEFAULT_L2,
    scale: float = CENTROID_SCALE,
    centred: bool = True,
) -> LinearHead:
    """A written head (``logistic`` or ``centroid``) fitted on raw features (N, D) and labels ``y``.

    ``l2``, ``scale``, ``centred``: the defaults are what the measurement chose (docs/fit.md)."""
    with one_thread(), torch.enable_grad():
        center = features.double().mean(dim=0) if centred else torch.zeros(features.shape[1], dtype=torch.float64)
        x = prepare(features, center)
        if kind == "logistic":
            weight, bias = fit_logistic(x, y, categories, l2=l2)
        elif kind == "centroid":
            weight, bias = fit_centroid(x, y, categories, scale=scale)
        else:
            raise ValueError(f"no such head {kind!r}; the heads are {', '.join(WRITABLE_HEADS)}")
    return LinearHead(kind, weight, bias, center)


def knn_probabilities(
    train: torch.Tensor, y: torch.Tensor, categories: int, test: torch.Tensor, *, k: int = KNN_K, centred: bool = True
) -> torch.Tensor:
    """kNN class shares: the ``k`` most similar training examples' similarities (clipped at 0), summed per category."""
    with one_thread():
        center = train.double().mean(dim=0) if centred else torch.zeros(train.shape[1], dtype=torch.float64)
        similarity = prepare(test, center) @ prepare(train, center).T
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
