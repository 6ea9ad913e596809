"""What the routes share: :class:`AppState` (the classifier, its batcher, readiness, the queue bound).

Uploads are decoded where ``predict`` would decode them (:class:`UploadDecoding`): on the CPU in
the request threads, or, on CUDA with GPU decoding, in the batcher thread, one batched nvJPEG
call for every request it gathered (request threads then only read the bytes).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from imgclassify.pipeline import Classifier
    from imgclassify.server.batching import DynamicBatcher, Prepared
    from imgclassify.server.config import ServerConfig
    from imgclassify.server.metrics import Metrics

log = logging.getLogger("imgclassify.server")

#: uploads as (name, bytes) -> (uint8 rows on the device for the decodable ones, ``{position: error}``):
#: :class:`~imgclassify.decode.gpu.GpuBatchDecoder`'s call
BatchDecode = Callable[[Sequence[tuple[str, "bytes | None"]]], "Prepared"]


@dataclass(frozen=True)
class UploadDecoding:
    """Where the server decodes uploads: the choice ``predict`` makes for its loader.

    On CUDA with working nvJPEG and ``IMGCLASSIFY_GPU_DECODE`` not off
    (:func:`~imgclassify.decode.loaders.choose_loader`), the batcher thread decodes each gathered batch
    with :class:`~imgclassify.decode.gpu.GpuBatchDecoder`; everywhere else the request threads
    decode on the CPU, as ``classifier.decoder``. The fields are what the choice and the decoder
    take (tests give their own); None is the real thing: nvJPEG probed on the device, the
    process environment, a ``GpuBatchDecoder`` on the classifier's device.
    """

    nvjpeg_works: Callable[[torch.device], bool] | None = None
    environ: Mapping[str, str] | None = None
    decoder: Callable[[Classifier], BatchDecode] | None = None

    def batch_decoder(self, classifier: Classifier) -> BatchDecode | None:
        """The batcher's decoding stage for ``classifier``, or None: request threads decode on the CPU."""
        from imgclassify.decode.gpu import GpuBatchDecoder, gpu_decoding_available
        from imgclassify.decode.loaders import LoaderKind, choose_loader

        probe = self.nvjpeg_works or gpu_decoding_available
        if choose_loader(classifier.device, nvjpeg_works=probe, environ=self.environ) is not LoaderKind.GPU_DECODE:
            return None
        if self.decoder is not None:
            return self.decoder(classifier)
        return GpuBatchDecoder(classifier.decoder, classifier.device)


class AppState:
    """What the routes share: the classifier, its batcher, readiness, the images admitted.

    ``config``: resolved (:meth:`~imgclassify.server.config.ServerConfig.resolved_for`).
    ``batch_decode`` None: request threads decode and submit uint8 batches. Otherwise they
    submit their uploads' (name, bytes) and the batcher decodes every gathered request's
    uploads in one ``batch_decode`` call before the forward pass.
    """

    def __init__(
        self, classifier: Classifier, config: ServerConfig, metrics: Metrics, batch_decode: BatchDecode | None
    ) -> None:
        from imgclassify.server.batching import DynamicBatcher

        self.classifier = classifier
        self.config = config
        self.metrics = metrics
        self.ready = threading.Event()
        self.batch_decode = batch_decode
        assert config.max_queue is not None, "create_app resolves the config first (ServerConfig.resolved_for)"
        self.max_queue = config.max_queue
        #: the API key's bytes, as :func:`~imgclassify.server.auth.check_authorization` takes it
        self.key = None if config.api_key is None else config.api_key.encode("utf-8")
        self._queued = 0
        self._queue_lock = threading.Lock()
        settings: dict[str, Any] = {
            "max_batch_size": config.max_batch_size,
            "max_delay_s": config.max_batch_delay_ms / 1000.0,
            "on_batch": metrics.batch_size.observe,
        }
        self.batcher: DynamicBatcher[Any]
        if batch_decode is None:
            self.batcher = DynamicBatcher(classifier.forward_uint8, **settings)
        else:
            self.batcher = DynamicBatcher(classifier.forward_uint8, prepare=self._decode_all, **settings)

    def _decode_all(self, payloads: list[list[tuple[str, bytes]]]) -> Prepared:
        """The batcher's prepare stage with GPU decoding: every gathered request's uploads in one call."""
        assert self.batch_decode is not None
        return self.batch_decode([item for uploads in payloads for item in uploads])

    def admit(self, images: int) -> bool:
        """Count ``images`` in, unless that would pass ``max_queue`` (a request alone is always let in)."""
        with self._queue_lock:
            if self._queued and self._queued + images > self.max_queue:
                self.metrics.rejected.labels("overloaded").inc()
                return False
            self._queued += images
            self.metrics.queued.set(self._queued)
            return True

    def overloaded_message(self) -> str:
        return f"the server is busy ({self.max_queue} images waiting at most); retry shortly"

    def release(self, images: int) -> None:
        with self._queue_lock:
            self._queued -= images
            self.metrics.queued.set(self._queued)

    @property
    def decode(self) -> str:
        """Where uploads are decoded: ``"gpu"`` (in the batcher) or ``"cpu"`` (in the request threads)."""
        return "cpu" if self.batch_decode is None else "gpu"

    def start_warm_up(self, *, background: bool = True) -> None:
        """Warm the model up (in a daemon thread unless not ``background``); ``/readyz`` says when it is done."""
        if background:
            threading.Thread(target=self.warm_up, name="imgclassify-warmup", daemon=True).start()
        else:
            self.warm_up()

    def warm_up(self) -> None:
        try:
            if self.batch_decode is not None:  # nvJPEG's first batched call sets it up
                self.batch_decode([("warm-up.jpg", _small_jpeg())])
            self.classifier.warm_up(1)
            if self.batcher.max_batch_size > 1:
                self.classifier.warm_up(self.batcher.max_batch_size)
        except Exception:  # pragma: no cover - reported by /readyz staying 503
            log.exception("warm-up failed")
            return
        self.ready.set()
        self.metrics.ready.set(1)
        log.info(
            "model %s ready on %s, uploads decoded on the %s", self.classifier.name, self.classifier.device,
            self.decode.upper(),
        )  # fmt: skip


def _small_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()
