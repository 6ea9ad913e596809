"""bf16 on the CPU: a TorchScript graph traced and frozen under autocast, for runs of many full batches.

Freezing casts the weights to bf16 once instead of in every forward pass (DenseNet-121 60 -> 72
images/s on a 2-core Xeon with AMX). The graph serves the one batch shape that comes often
(:meth:`plan`); other shapes run eagerly. It is checked against eager on its first batch and
dropped if they disagree. Tracing costs about a second, so only long runs plan for it.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from .torch_eager import TorchEagerBackend

if TYPE_CHECKING:
    import torch

log = logging.getLogger("imgclassify")


class FrozenGraphBackend:
    name = "torch-frozen-bf16"

    def __init__(self, eager: TorchEagerBackend, *, model_name: str) -> None:
        self.eager = eager
        self.model_name = model_name
        #: False: never trace (tests compare against eager this way)
        self.enabled = True
        self._batch_size: int | None = None  # the batch size the graph serves
        self._graphs: dict[tuple[int, ...], Any] = {}  # shape -> graph, or None where tracing failed

    @property
    def device(self) -> torch.device:
        return self.eager.device

    @property
    def graphs(self) -> dict[tuple[int, ...], Any]:
        return self._graphs

    def plan(self, batch_size: int | None) -> None:
        self._batch_size = batch_size

    def __getstate__(self) -> dict[str, Any]:  # TorchScript graphs do not pickle: retrace on the other side
        state = self.__dict__.copy()
        state["_graphs"] = {}
        return state

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            x = self.eager.normalize(batch)
            graph = self._graph_for(x)
            logits = self.eager.logits(x, graph)
            return torch.softmax(logits.float(), dim=1).cpu()

    def _graph_for(self, x: torch.Tensor) -> Any:
        shape = tuple(x.shape)
        if not self.enabled or self._batch_size is None or shape[0] != self._batch_size:
            return None
        if shape not in self._graphs:
            self._graphs[shape] = self._trace(x)
        return self._graphs[shape]

    def _trace(self, x: torch.Tensor) -> Any:
        import torch

        model = self.eager.model
        try:
            with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
                warnings.simplefilter("ignore")
                graph = torch.jit.freeze(torch.jit.trace(model, x, check_trace=False))  # type: ignore[no-untyped-call]
                graph(x)  # the profiling executor optimizes on the second call: pay it here
                eager, traced = model(x).float(), graph(x).float()
        except Exception as exc:  # some architectures do not trace: stay eager
            log.debug("%s: no frozen graph (%s); running eagerly", self.model_name, exc)
            return None
        if (
            not torch.equal(eager.argmax(1), traced.argmax(1))
            or (eager - traced).abs().max() > 0.05 * eager.abs().max()
        ):
            log.debug("%s: frozen graph disagrees with eager; running eagerly", self.model_name)
            return None
        return graph
