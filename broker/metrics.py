"""Every Prometheus metric Headwater exposes, declared once (names map Lambda's CloudWatch metrics).

Worker pools run several processes; they record through prometheus-client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set by the pool before its workers start), and the pool serves the
sum. Labels stay bounded: function, trigger, mapping, source kind; never a request or record id.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from broker import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 10800, 21600)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

INVOCATIONS = Counter("headwater_invocations", "Handler runs, successes and function errors.", ["function", "trigger"])
ERRORS = Counter(
    "headwater_invocation_errors",
    "Runs that ended in a function error.",
    ["function", "trigger", "error_type"],
)
THROTTLES = Counter("headwater_throttles", "Invocations refused for lack of concurrency.", ["function", "reason"])
DURATION = Histogram(
    "headwater_invocation_duration_seconds",
    "Handler time per run, init excluded.",
    ["function"],
    buckets=DURATION_BUCKETS,
)
CONCURRENT = Gauge(
    "headwater_concurrent_executions", "Runs in progress now.", ["function"], multiprocess_mode="livesum"
)
COLD_STARTS = Counter("headwater_cold_starts", "Execution environments initialised (INIT phases).", ["function"])
ASYNC_RECEIVED = Counter(
    "headwater_async_events_received", "Events accepted for asynchronous invocation.", ["function"]
)
ASYNC_AGE = Histogram(
    "headwater_async_event_age_seconds",
    "Time from acceptance to each run of an async event.",
    ["function"],
    buckets=AGE_BUCKETS,
)
ASYNC_DROPPED = Counter(
    "headwater_async_events_dropped", "Async events that ended without a successful run.", ["function", "reason"]
)
DEAD_LETTER_ERRORS = Counter(
    "headwater_dead_letter_errors", "Failed writes to a dead-letter queue.", ["function", "target_type"]
)
DESTINATION_FAILURES = Counter(
    "headwater_destination_delivery_failures",
    "Failed writes to an on-success or on-failure destination.",
    ["function", "destination", "target_type"],
)
CONCURRENCY_LIMIT = Gauge(
    "headwater_concurrency_limit", "Reserved concurrency per function.", ["function", "kind"], multiprocess_mode="max"
)
BUILD_INFO = Gauge("headwater_build_info", "The running Headwater version.", ["version"], multiprocess_mode="max")
WORKERS = Gauge("headwater_worker_pool_workers", "Worker processes by state.", ["state"], multiprocess_mode="livesum")
QUARANTINED = Counter(
    "headwater_jobs_quarantined",
    "Jobs moved to the quarantine: undecodable, or breaking the worker (see `headwater quarantine list`).",
    ["function"],
)
FENCED = Counter(
    "headwater_fenced_operations",
    "Acknowledgements, completions or quarantines refused because the claim had moved on (its job "
    "was handed back after a lapsed lease; it may run twice, never zero times).",
    ["operation"],
)
LEASES_LOST = Counter(
    "headwater_worker_leases_lost", "Times a live worker found its lease lapsed and its jobs handed back."
)
STORE_ERRORS = Counter(
    "headwater_store_errors",
    "Redis errors met by a process and retried (connection, timeout, OOM, READONLY, LOADING...).",
    ["error"],
)
ESM_STAGES = (
    *("polled", "filtered_out", "invoked", "failed_invoke", "deleted", "dropped", "on_failure_delivered"),
    "handed_back",  # a batch whose invocation vanished went back to its source, to be read again
    "unreadable",  # a record the source could not decode was skipped (see LastProcessingResult)
)
ESM_EVENTS = Counter(
    "headwater_esm_events", "Event source mapping accounting by stage.", ["event_source", "source_type", "stage"]
)
POLLER_BATCH_SIZE = Histogram(
    "headwater_poller_batch_size", "Records per batch sent to a function.", ["event_source"], buckets=BATCH_BUCKETS
)
POLLER_CONCURRENT_BATCHES = Gauge(
    "headwater_poller_concurrent_batches",
    "Batches in flight per mapping.",
    ["event_source"],
    multiprocess_mode="livesum",
)
POLLER_LAST_POLL = Gauge(
    "headwater_poller_last_poll_timestamp_seconds",
    "When a mapping last polled its source.",
    ["event_source"],
    multiprocess_mode="max",
)

POLLER_CRASHES = Counter(
    "headwater_poller_crashes", "Pollers restarted after an unexpected error.", ["event_source", "source_type"]
)
SQS_OLDEST_MESSAGE_AGE = Gauge(
    "headwater_sqs_oldest_message_age_seconds",
    "Age (from SentTimestamp) of the oldest message in a mapping's latest receive; 0 when it was empty.",
    ["event_source"],
    multiprocess_mode="max",
)

KAFKA_OFFSET_LAG = Gauge(
    "headwater_kafka_offset_lag",
    "Kafka: records written to a partition and not yet committed by the mapping (end offset - committed).",
    ["event_source", "partition"],
    multiprocess_mode="max",
)
KAFKA_REBALANCES = Counter(
    "headwater_kafka_rebalances",
    "Kafka: partition assignments a mapping's consumer received (the first join included).",
    ["event_source"],
)


class QueueDepthCollector(Collector):
    """Reads queue depths (and the quarantine's size) from Redis at scrape time, so they are never stale."""

    def __init__(self, depths: Callable[[], dict[str, int]], quarantined: Callable[[], int] | None = None) -> None:
        self._depths = depths
        self._quarantined = quarantined

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("headwater_queue_depth", "Invocations waiting per function queue.", labels=["queue"])
        quarantine = GaugeMetricFamily(
            "headwater_quarantined_jobs", "Jobs in the quarantine now (see `headwater quarantine list`)."
        )
        try:
            for queue, depth in self._depths().items():
                family.add_metric([queue], depth)
            if self._quarantined is not None:
                quarantine.add_metric([], self._quarantined())
        except (OSError, RedisError):  # Redis away: report nothing rather than fail the whole scrape
            pass
        yield family
        if self._quarantined is not None:
            yield quarantine


def declare_functions(functions: Iterable[tuple[str, int | None]]) -> None:
    """Create each function's series at zero, so `increase()` in alerts sees the very first event."""
    BUILD_INFO.labels(__version__).set(1)
    for name, reserved in functions:
        for counter, labels in (
            (THROTTLES, ("function_limit",)),
            (ASYNC_DROPPED, ("max_retries",)),
            (ASYNC_DROPPED, ("max_event_age",)),
            (ASYNC_DROPPED, ("zero_reserved_concurrency",)),
        ):
            counter.labels(name, *labels)
        if reserved is not None:
            CONCURRENCY_LIMIT.labels(name, "reserved").set(reserved)


def registry_for_process() -> CollectorRegistry:
    """The registry to serve: the multiprocess sum in a pool, the default registry elsewhere."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def serve(port: int, registry: CollectorRegistry, healthy: Callable[[], bool], host: str = "") -> ThreadingHTTPServer:
    """Serve `/metrics` and `/healthz` on a daemon thread (all interfaces: a pod is scraped from outside)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                ok = healthy()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
