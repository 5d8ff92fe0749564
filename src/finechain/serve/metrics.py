"""Prometheus metrics of a server, named by Prometheus's conventions (base units: seconds; counters end in ``_total``;
labels of bounded cardinality only: routes, statuses, task names, a task's own labels).

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set by ``finechain serve --workers``), every worker writes
its samples there and ``/metrics`` adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Every metric of one server process, in its own registry.

    Example:
        >>> m = Metrics()
        >>> m.requests.labels(route="/v1/predict", method="POST", status="200").inc()
        >>> b"finechain_requests_total" in m.render()[0]
        True
    """

    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry  # multiprocess: samples go to files, collected at render
        self.requests = Counter(
            "finechain_requests", "Requests answered, by route, method and HTTP status", ["route", "method", "status"], registry=registry
        )
        self.request_seconds = Histogram(
            "finechain_request_duration_seconds", "Time from request to response", ["route"], buckets=LATENCY, registry=registry
        )
        self.queue_seconds = Histogram(
            "finechain_queue_wait_seconds", "Time a request's rows waited for a forward pass", buckets=LATENCY, registry=registry
        )
        self.batch_rows = Histogram(
            "finechain_batch_size", "Token rows per forward pass (texts and long-text windows)", buckets=SIZES, registry=registry
        )
        self.batch_requests = Histogram("finechain_batch_requests", "Requests sharing one forward pass", buckets=SIZES, registry=registry)
        self.batch_tokens = Histogram(
            "finechain_batch_tokens", "Tokens per forward pass (rows x longest row)", buckets=TOKENS, registry=registry
        )
        self.forward_seconds = Histogram(
            "finechain_forward_duration_seconds", "Time of one forward pass", buckets=LATENCY, registry=registry
        )
        self.task_seconds = Counter(
            "finechain_task_compute_seconds", "Compute time of each task's tail (host time on GPUs)", ["task"], registry=registry
        )
        self.predictions = Counter(
            "finechain_predictions", "Answers given, by task and label (entity type for taggers)", ["task", "label"], registry=registry
        )
        self.texts = Counter("finechain_texts", "Texts answered", registry=registry)
        self.queue_depth = Gauge(
            "finechain_queue_depth", "Requests waiting for a forward pass", registry=registry, multiprocess_mode="livesum"
        )
        self.reloads = Counter(
            "finechain_reloads", "Attempts to load a new version of the chain, by outcome", ["outcome"], registry=registry
        )
        self.ready = Gauge("finechain_ready", "1 when a chain is loaded and warmed up", registry=registry, multiprocess_mode="livemax")

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiprocess:
            collected = CollectorRegistry()
            multiprocess.MultiProcessCollector(collected)
            return generate_latest(collected), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
