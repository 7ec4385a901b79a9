"""The Celery baseline for bench/async_invoke.py: one no-op task on the benchmark's Redis."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json", accept_content=["json"], task_ignore_result=True, worker_hijack_root_logger=False
)


@app.task(name="bench.noop")
def noop(event: object, context: object) -> None:
    return None
