"""The invocation queue's read-only side: where jobs are, without moving any.

`headwater status`, the quarantine listing, the worker pool's autoscaling depth and the worker's
check of what it still holds only look: nothing here runs a script or changes a key, so it can be
used on its own against a replica or while workers run. Every answer is a snapshot; a job moving
meanwhile may be counted in two places or in none. The fenced protocol that moves jobs is
`broker.queue.InvocationQueue`, which inherits these reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis

from broker import keys


@dataclass(frozen=True, slots=True)
class QuarantinedJob:
    job_id: str
    function_name: str
    reason: str
    quarantined_at: float
    has_data: bool


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """Where a set of functions' jobs are now (`headwater status`), and the workers' leases.

    `running` counts the jobs in workers' processing lists: the one each worker runs and those it
    claimed ahead (prefetch). `workers_expired` have a lapsed lease whose jobs are not handed back yet."""

    queued: dict[str, int]
    running: dict[str, int]
    scheduled: dict[str, int]  # retries and throttle backoffs waiting for their due time
    quarantined: dict[str, int]
    workers_alive: int
    workers_expired: int
    workers_serving: dict[str, int]  # live workers per function (a worker may serve several)


class QueueInspection:
    """Read-only views of the invocation queue on one Redis (see the module docstring)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def job_pending(self, job_id: str) -> bool:
        """Whether the job still exists and is not quarantined (its outcome may still come)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.RQ_JOB_KEY_PREFIX + job_id)
        pipe.hexists(keys.QUARANTINE, job_id)
        exists, quarantined = pipe.execute()
        return bool(exists) and not quarantined

    def depth(self, function_name: str) -> int:
        return int(self.redis.llen(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name(function_name)))

    def status(self, function_names: list[str]) -> QueueStatus:
        """A read-only snapshot of every place a job can be (two round trips; nothing is locked, so
        a job moving meanwhile may be counted in two places or in none)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in function_names:
            pipe.llen(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name(name))
        pipe.zrange(keys.WORKERS, 0, -1, withscores=True)
        pipe.zrange(keys.SCHEDULED, 0, -1)
        pipe.hvals(keys.QUARANTINE)
        pipe.hgetall(keys.WORKER_FUNCTIONS)
        pipe.time()
        *lengths, workers, scheduled, quarantined, served, (seconds, micros) = pipe.execute()
        holding = self.redis.pipeline(transaction=False)
        for worker_id, _ in workers:
            holding.lrange(keys.processing(as_text(worker_id)), 0, -1)
        held = [entry for entries in holding.execute() for entry in entries]
        now_ms = seconds * 1000 + micros // 1000
        live = [as_text(worker_id) for worker_id, deadline in workers if deadline > now_ms]
        serving = [as_text(served.get(worker_id.encode(), b"")).split("\t") for worker_id in live]
        return QueueStatus(
            queued=dict(zip(function_names, (int(n) for n in lengths), strict=True)),
            running=_count_by_function(function_names, (keys.split_entry(as_text(e))[0] for e in held)),
            scheduled=_count_by_function(function_names, (keys.split_entry(as_text(e))[0] for e in scheduled)),
            quarantined=_count_by_function(function_names, (str(_reason(d).get("queue", "")) for d in quarantined)),
            workers_alive=len(live),
            workers_expired=len(workers) - len(live),
            workers_serving={name: sum(name in names for names in serving) for name in function_names},
        )

    def quarantined(self) -> list[QuarantinedJob]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(keys.QUARANTINE))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in raw:
            pipe.hexists(keys.RQ_JOB_KEY_PREFIX + as_text(job_id), "data")
        found = pipe.execute()
        jobs = []
        for (job_id, document), has_data in zip(raw.items(), found, strict=True):
            details = _reason(document)
            jobs.append(
                QuarantinedJob(
                    job_id=as_text(job_id),
                    function_name=keys.function_of_queue(str(details.get("queue", ""))),
                    reason=str(details.get("reason", "")),
                    quarantined_at=float(details.get("at", 0.0)),
                    has_data=bool(has_data),
                )
            )
        return sorted(jobs, key=lambda job: job.quarantined_at)

    def quarantine_size(self) -> int:
        return int(self.redis.hlen(keys.QUARANTINE))

    def held(self, worker_id: str) -> set[str]:
        """The entries the worker's processing list holds now."""
        return {as_text(entry) for entry in cast(list[bytes], self.redis.lrange(keys.processing(worker_id), 0, -1))}


def _reason(document: bytes) -> dict[str, Any]:
    try:
        details = json.loads(document)
    except ValueError:
        return {"reason": as_text(document)}
    return details if isinstance(details, dict) else {"reason": str(details)}


def _count_by_function(function_names: list[str], queues: Iterable[str]) -> dict[str, int]:
    """How many of `queues` (queue names, one per job) belong to each of the functions."""
    counts = dict.fromkeys(function_names, 0)
    for queue in queues:
        name = keys.function_of_queue(queue)
        if name in counts:
            counts[name] += 1
    return counts


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
