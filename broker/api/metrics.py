"""The API's own metrics. They belong with every other metric in `broker/metrics.py`; they live here
only until that module (not this package's to edit) takes them over, names unchanged."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

API_REQUESTS = Counter(
    "headwater_api_requests",
    "Lambda API requests answered, by operation and HTTP status (Unknown: no operation matched).",
    ["operation", "status"],
)
API_REQUEST_DURATION = Histogram(
    "headwater_api_request_duration_seconds",
    "Time from a request's arrival to its answer (a synchronous Invoke includes the function's run).",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
