"""The Celery baseline for bench/async_invoke.py: one no-op task on the benchmark's Redis."""

from __future__ import annotations

import os
from typing import Protocol

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json", accept_content=["json"], task_ignore_result=True, worker_hijack_root_logger=False
)


class NoopTask(Protocol):
    """What the benchmark uses of the registered task: celery ships no types, so mypy sees `app.task` as Any."""

    def apply_async(self, args: tuple[object, object], queue: str) -> object: ...


def _noop(event: object, context: object) -> None:
    return None


noop: NoopTask = app.task(name="bench.noop")(_noop)
