"""The server's Prometheus metrics (``GET /metrics``): one registry per app, never the process-wide one."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)


class Metrics:
    """Requests by route and status, their latency, images by outcome, batch sizes, readiness, the queue."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imgclassify_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgclassify_http_request_duration_seconds", "Request latency by route", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )  # fmt: skip
        self.images = Counter("imgclassify_images", "Images received, by outcome", ["outcome"], registry=self.registry)
        self.batch_size = Histogram(
            "imgclassify_batch_size",
            "Images per forward pass",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.ready = Gauge("imgclassify_ready", "1 once the model is loaded and warmed up", registry=self.registry)
        self.rejected = Counter(
            "imgclassify_rejected_requests",
            "Requests refused before classification, by reason (overloaded: the queue was full)",
            ["reason"],
            registry=self.registry,
        )
        self.queued = Gauge("imgclassify_queued_images", "Images admitted and not yet answered", registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, elapsed: float) -> None:
        """One answered request: counted by route, method and status, its latency by route."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(elapsed)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
