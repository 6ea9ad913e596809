"""The Ray engine: a ``predict`` run on a Ray cluster, with Ray Data doing the work.

A Ray Dataset of ``{"index", "path"}`` rows (local paths must be readable on every node: shared
storage; URLs are read by the tasks); decoding as Ray tasks (:func:`decode_batch`, the same
:class:`~imgclassify.decode.decoder.Decoder` as a local run: uint8 arrays, or an error string per
file); the model in an actor pool
(:class:`ModelActor`: one classifier per actor, built from the pickled
:class:`~imgclassify.models.plan.ModelPlan`); top-k candidates back to the driver in input order
(``preserve_order``), where the runner writes them as for a local run. Actors that die are
restarted and their batches retried by Ray (Ray Data's actor pools default to unlimited
``max_restarts`` and ``max_task_retries``; decode tasks retry too); the
driver still writes each input once (:class:`InOrder`).

URL inputs (``s3://``, ``gs://``, ``az://``, ``http(s)://``) are read inside the decode tasks with
the run's :class:`~imgclassify.system.storage.Storage` (its fsspec filesystems and the
``--storage-option`` values, pickled with the task, never shown), through the local engine's own
fetch stage (:func:`~imgclassify.decode.fetching.iter_fetched_batches`): up to
:func:`~imgclassify.decode.fetching.fetch_threads` reads in flight per task (no more than its
batch), about that many objects' bytes held, each object at most
:data:`~imgclassify.system.storage.MAX_OBJECT_BYTES`, and a read that fails (a missing object, a
404, access denied) is that input's error record, as locally. Not ``ray.data.read_binary_files``:
it looks up every path on the driver before the run (again: the runner has listed them), a
missing object fails the whole Dataset (``FileNotFoundError``) or, with ``ignore_missing_paths``,
is dropped without a record; an object that fails to read later fails its read task for good;
and it reads each object whole, with no size limit.

The driver does not load the model: the labels come from the plan (a ``--weights`` file without
``--labels`` is read once by a Ray task for its class count) and the device from the cluster.
Importing this module does not import ray or torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import os
import pickle
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from imgclassify.decode.decoder import Decoder
from imgclassify.decode.fetching import fetch_threads
from imgclassify.errors import EngineError, ImgclassifyError, UsageError
from imgclassify.extras import install_hint
from imgclassify.results.records import Candidate, Prediction
from imgclassify.system.storage import is_url

if TYPE_CHECKING:
    import numpy as np

    from imgclassify.models.labels import Labels
    from imgclassify.models.plan import LabelSet, ModelPlan
    from imgclassify.run.settings import RunSettings
    from imgclassify.system.storage import Storage

log = logging.getLogger("imgclassify")

#: memory each decode task reserves on its node
DECODE_TASK_MEMORY = 256 * 1024 * 1024
#: what a lost input's record says (never expected: Ray retries failed tasks)
LOST = "not returned by the Ray cluster (a task failed for good); run again with --resume"
#: Ray's switch for clusters of several machines (on by default, off on macOS and Windows). Off, Ray
#: takes the loopback address for this node's (``ray._private.services.get_node_ip_address``), and
#: the GCS, raylet, agents and workers listen on 127.0.0.1 alone; on, the machine's network address,
#: and they listen on every interface (``node_ip_address="127.0.0.1"`` alone is not enough: a driver
#: resolves a 127.0.0.1 address to the network one). Ray reads it once, when imported.
RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While inside, a Ray started in this process (and a driver connecting from it) takes 127.0.0.1
    for this node's address: :data:`RAY_CLUSTER_SWITCH` off in the environment, which the processes
    that Ray starts inherit, and in Ray's constants, read when ray was imported."""
    from ray._private import ray_constants

    saved_env = os.environ.get(RAY_CLUSTER_SWITCH)
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[RAY_CLUSTER_SWITCH] = saved_env


#: this worker process's Storage: (a digest of the pickled Storage, the Storage), reused by the
#: next task with the same options (a filesystem costs a few hundred ms to make; its connections stay)
_worker_storage: tuple[str, Storage] | None = None


def shared_storage(storage: Storage) -> Storage:
    """The Storage this worker process already made for the same options, else ``storage`` (kept)."""
    global _worker_storage
    key = hashlib.sha256(pickle.dumps(storage)).hexdigest()  # the options, never shown
    if _worker_storage is None or _worker_storage[0] != key:
        _worker_storage = (key, storage)
    return _worker_storage[1]


def decode_batch(
    batch: dict[str, np.ndarray], decoder: Decoder, storage: Storage | None = None, fetchers: int = 1
) -> dict[str, np.ndarray]:
    """Ray task: paths or URLs -> uint8 NCHW images (zeros for a failure) and an error string per row ("" if none).

    A URL's bytes are read here (``storage``, up to ``fetchers`` reads in flight and about as many
    objects' bytes held), then decoded as a local file is; a read that fails is that row's error."""
    import numpy as np

    from imgclassify.decode.fetching import iter_fetched_batches
    from imgclassify.system.storage import Storage

    size = decoder.preprocess.crop_size
    paths = [str(path) for path in batch["path"]]
    images = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    errors = [""] * len(paths)
    urls = sum(map(is_url, paths))
    storage = shared_storage(storage if storage is not None else Storage()) if urls else Storage()
    # one input at a time: the fetch window is then max(2, fetchers) inputs ahead (local paths pass through)
    for item in iter_fetched_batches(
        paths, decoder, storage, batch_size=1, threads=0, fetchers=max(1, min(fetchers, urls))
    ):
        (row,) = item.indices
        if item.errors:
            errors[row] = item.errors[row]
        else:
            images[row] = item.tensor[0].numpy()
    return {"index": batch["index"], "path": batch["path"], "image": images, "error": np.array(errors, dtype=object)}


class ModelActor:
    """Ray actor: one classifier; a decoded batch -> top-k class ids and probabilities, plus its node id."""

    def __init__(
        self, plan: ModelPlan, top_k: int, batch_size: int, batches: int, threshold: float | None = None
    ) -> None:
        import ray

        from imgclassify.pipeline import build_classifier

        self.classifier = build_classifier(plan)
        self.classifier.plan_batches(batch_size, batches)
        self.renderer = self.classifier.renderer(top_k, threshold)
        # a multi-label head with a threshold lists every class above it: room for all of them
        multi = self.renderer.multi_label and threshold is not None
        self.top_k = self.classifier.num_classes if multi else top_k
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np
        import torch

        errors = batch["error"]
        good = np.array([not e for e in errors], dtype=bool)
        n = len(errors)
        class_ids = np.full((n, self.top_k), -1, dtype=np.int64)
        probabilities = np.zeros((n, self.top_k), dtype=np.float64)
        if good.any():
            probs = self.classifier.forward_uint8(torch.from_numpy(np.ascontiguousarray(batch["image"][good])))
            rows = np.flatnonzero(good)
            for row, candidates in zip(rows, self.renderer.candidates(probs), strict=True):
                class_ids[row, : len(candidates)] = [c.class_id for c in candidates]
                probabilities[row, : len(candidates)] = [c.probability for c in candidates]
        return {
            "index": batch["index"],
            "path": batch["path"],
            "error": errors,
            "class_id": class_ids,
            "probability": probabilities,
            "node_id": np.array([self.node_id] * n, dtype=object),
        }


def class_count(plan: ModelPlan) -> int:
    """Ray task: the class count of the model (a ``--weights`` checkpoint, an exported file), which
    also checks that it loads."""
    from imgclassify.pipeline import build_net

    return build_net(plan)[2]


def to_record(path: str, block: dict[str, np.ndarray], row: int, labels: Labels) -> Prediction:
    """Row ``row`` of an actor's output as a record (the candidates as a local run's Renderer makes them)."""
    error = str(block["error"][row])
    if error:
        return Prediction(path, error=error)
    ids, probabilities = block["class_id"][row].tolist(), block["probability"][row].tolist()
    return Prediction(
        path,
        tuple(
            Candidate(c, labels[c].wnid, labels[c].name, p)
            for c, p in zip(ids, probabilities, strict=True)
            if c >= 0  # a multi-label row shorter than the widest
        ),
    )


def check_cpus_left(actors: int, actor_cpus: float, cluster_cpus: float) -> None:
    """The actors must leave a CPU for the decode tasks, or the run waits forever."""
    if cluster_cpus - actors * actor_cpus < 1:
        most = max(0, int((cluster_cpus - 1) // actor_cpus))
        raise UsageError(
            f"--ray-actors {actors} leaves no CPU for decoding on a Ray cluster of {cluster_cpus:g} CPUs; "
            f"give --ray-actors {most} or less" + ("" if most else ", or add nodes")
        )


class InOrder:
    """Records by input index -> in input order, each index once (duplicates from retries dropped)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next = 0
        self.pending: dict[int, tuple[Prediction, str]] = {}
        self.duplicates = 0

    def add(self, index: int, record: Prediction, node: str) -> list[tuple[Prediction, str]]:
        """Accept one record; returns the records now ready, in order."""
        if index < self.next or index in self.pending or not 0 <= index < self.total:
            self.duplicates += 1
            return []
        self.pending[index] = (record, node)
        ready = []
        while self.next in self.pending:
            ready.append(self.pending.pop(self.next))
            self.next += 1
        return ready

    def missing(self) -> list[int]:
        """Indices never received (after the stream ended)."""
        return [i for i in range(self.next, self.total) if i not in self.pending]


class RayEngine:
    """``--engine ray``: see the module docstring."""

    #: the fewest inputs the runner hands one :meth:`batches` call (but the last): each call builds
    #: its Dataset and actor pool, a model load per actor (about 6 s here), so chunks are large
    min_chunk = 65536

    @dataclasses.dataclass(frozen=True)
    class Settings:
        """``--ray-address`` (None: ``RAY_ADDRESS``, else a Ray of this machine) and ``--ray-actors``
        (None: one per GPU, else half the CPUs)."""

        address: str | None = None
        actors: int | None = None

    @classmethod
    def from_settings(cls, plan: ModelPlan, settings: Settings, *, tune_process: bool = False) -> RayEngine:
        return cls(plan, address=settings.address, actors=settings.actors, tune_process=tune_process)

    def __init__(
        self,
        plan: ModelPlan,
        *,
        address: str | None = None,
        actors: int | None = None,
        actor_cpus: float = 1.0,
        actor_resources: dict[str, float] | None = None,
        init_options: dict[str, Any] | None = None,
        tune_process: bool = False,  # the driver runs no model: nothing to tune
    ) -> None:
        if actors is not None and actors < 1:
            raise UsageError(f"--ray-actors must be at least 1, got {actors}")
        self.plan = plan
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.actors = actors
        self.actor_cpus = actor_cpus
        self.actor_resources = actor_resources
        self.init_options = init_options or {}
        self.owns_ray = False
        self.connected = False
        self.gpus_per_actor = 0
        self._device: str | None = None
        self._label_set: LabelSet | None = None
        self.node_images: Counter[str] = Counter()
        self.node_ips: dict[str, str] = {}

    # -- set-up ------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError(f"--engine ray needs Ray (the ray extra): {install_hint('ray')}") from None
        options = {"log_to_driver": False, "logging_level": logging.WARNING, **self.init_options}
        if not ray.is_initialized():
            if self.address is None:
                options.setdefault("include_dashboard", False)
                with loopback_only():  # a Ray of this machine alone: nothing listens on the network
                    ray.init(address="local", **options)  # never attach to another cluster by accident
                self.owns_ray = True
                node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
                if not ipaddress.ip_address(node_ip).is_loopback:
                    log.warning("ray: the local Ray took %s, not loopback: it listens on the network", node_ip)
            else:
                try:
                    ray.init(address=self.address, **options)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise UsageError(
                        f"--ray-address {self.address}: cannot connect ({' '.join(str(exc).split())[:200]}); "
                        "give the head node's address (ray start --head prints it) or leave it out for a local Ray"
                    ) from None
            self.connected = True
        self._device = self._choose_device(ray.cluster_resources())  # type: ignore[no-untyped-call]
        self._label_set = self._labels()

    def _choose_device(self, resources: dict[str, float]) -> str:
        from imgclassify.system.devices import Backend

        asked = self.plan.options.device
        gpus = resources.get("GPU", 0)
        if asked == "auto":
            asked = "cuda" if gpus and self.plan.options.backend is Backend.TORCH else "cpu"
        if asked.startswith("cuda"):
            if not gpus:
                raise UsageError(f"--device {asked}: the Ray cluster has no GPU; use --device cpu (or auto)")
            self.gpus_per_actor = 1
            return "cuda"  # each actor sees its own GPU as cuda:0
        return asked

    def _labels(self) -> LabelSet:
        import ray

        known = self.plan.expected_label_set()
        if known is not None:
            return known
        task = ray.remote(num_cpus=1, max_retries=2)(class_count)
        try:
            count = ray.get(task.remote(self.plan))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ImgclassifyError):
                raise cause from None
            raise EngineError(f"reading {self.plan.weights_path} on the Ray cluster failed: {cause}") from None
        return self.plan.label_set(count)

    @property
    def device(self) -> str:
        if self._device is None:
            raise RuntimeError("RayEngine.start() was not called")
        return self._device

    @property
    def label_set(self) -> LabelSet:
        if self._label_set is None:
            raise RuntimeError("RayEngine.start() was not called")
        return self._label_set

    # -- the run -----------------------------------------------------------------------------
    def batches(self, paths: Sequence[str], settings: RunSettings) -> Iterator[list[Prediction]]:
        """Records in input order, one list per batch of the actors (``settings.workers`` is not used)."""
        import ray
        from ray.data import DataContext

        batch_size, top_k = settings.batch_size, settings.top_k
        if not paths:
            return
        context = DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the runner shows its own
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
        if self.actors is None:  # one per GPU, else half the CPUs (the other half decodes)
            self.actors = gpus if self.gpus_per_actor else max(1, int(cpus // 2))
        actors = self.actors
        check_cpus_left(actors, self.actor_cpus, cpus)
        plan = dataclasses.replace(self.plan, options=self.plan.options.replace(device=self.device))
        decoder = Decoder(plan.preprocess, plan.options.decode)
        # URLs are read in the decode tasks, as many reads in flight per task as a local run has
        fetchers = fetch_threads() if any(map(is_url, paths)) else 1
        dataset = (
            ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
            .map_batches(
                decode_batch,  # type: ignore[arg-type]  # Ray's type has no room for fn_kwargs
                fn_kwargs={"decoder": decoder, "storage": settings.storage, "fetchers": fetchers},
                batch_size=batch_size,
                batch_format="numpy",
                # declared memory (a camera photo decodes to tens of MB); it also keeps Ray Data
                # from fusing decoding into the actors, where it would wait for the model
                memory=DECODE_TASK_MEMORY,
            )
            .map_batches(
                ModelActor,
                fn_constructor_kwargs={
                    "plan": plan,
                    "top_k": top_k,
                    "threshold": settings.threshold,
                    "batch_size": batch_size,
                    "batches": len(paths) // batch_size // actors,  # each actor's share
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=self.actor_cpus,
                num_gpus=self.gpus_per_actor,
                resources=self.actor_resources,
                # Ray Data's defaults for actor pools: max_restarts=-1, max_task_retries=-1 (a dead
                # actor is restarted and its batches retried); passing them is deprecated
            )
        )
        labels = self.label_set.labels
        order = InOrder(len(paths))
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)  # Ray Data's INFO lines about its plan: not for our stderr
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                ready: list[tuple[Prediction, str]] = []
                for row, index in enumerate(block["index"].tolist()):
                    record = to_record(paths[index], block, row, labels)
                    ready += order.add(index, record, str(block["node_id"][row]))
                if ready:
                    self.node_images.update(node for _, node in ready)
                    yield [record for record, _ in ready]
        except ray.exceptions.RayError as exc:
            raise EngineError(f"the Ray run failed: {' '.join(str(exc).split())[:400]}") from None
        finally:
            data_log.setLevel(level)
        if order.duplicates:
            log.info("ray: %d duplicate records (retried batches) dropped", order.duplicates)
        lost = order.missing()
        if lost:
            yield [Prediction(paths[i], error=LOST) for i in lost]

    # -- provenance, shutdown ----------------------------------------------------------------
    def _ips(self) -> dict[str, str]:
        import sys

        ray = sys.modules.get("ray")  # describe() before start() must not import it
        if ray is not None and ray.is_initialized() and any(n not in self.node_ips for n in self.node_images):
            self.node_ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
        return self.node_ips

    def describe(self) -> dict[str, Any]:
        ips = self._ips()
        return {
            "name": "ray",
            "address": self.address or "local",
            "actors": self.actors,
            "nodes": [
                {"node_id": node, "ip": ips.get(node), "images": count}
                for node, count in sorted(self.node_images.items())
            ],
        }

    def close(self) -> None:
        if self.connected:
            import ray

            ray.shutdown()  # for a cluster: disconnects, and Ray ends this run's actors and tasks
            self.connected = False
