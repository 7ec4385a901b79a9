"""The invocation queue's read-only side: where jobs are, without moving any.

`headwater status`, the quarantine listing, the worker pool's autoscaling depth and the worker's
check of what it still holds only look: nothing here runs a script or changes a key, so it can be
used on its own against a replica or while workers run. Every answer is a snapshot; a job moving
meanwhile may be counted in two places or in none. The fenced protocol that moves jobs is
`broker.queue.InvocationQueue`, which inherits these reads.

Each function's keys live in their own slot (`broker.keys`), so every read here goes function by
function, in pipelines that are not transactions (a Redis Cluster splits them by node). The
functions are those the caller names (its configuration), or, for the quarantine listing, those in
rq's registry of queues (`keys.RQ_QUEUES`, where every producer adds the queues it writes to).
"""

from __future__ import annotations

import json
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
    """Read-only views of the invocation queue on one Redis or a Cluster (see the module docstring)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def job_pending(self, function_name: str, job_id: str) -> bool:
        """Whether the function's job still exists and is not quarantined (its outcome may still come)."""
        pipe = self.redis.pipeline(transaction=False)  # the job's hash and its quarantine share a slot
        pipe.exists(keys.job(job_id))
        pipe.hexists(keys.quarantine(function_name), job_id)
        exists, quarantined = pipe.execute()
        return bool(exists) and not quarantined

    def depth(self, function_name: str) -> int:
        return int(self.redis.llen(keys.queue_key(function_name)))

    def registered_functions(self) -> list[str]:
        """The functions whose queues rq's registry knows: every function a producer wrote to."""
        queues = (as_text(key) for key in cast(set[bytes], self.redis.smembers(keys.RQ_QUEUES)))
        prefix = keys.RQ_QUEUE_KEY_PREFIX + keys.QUEUE_PREFIX + "{"
        return sorted(
            keys.function_of_queue(key.removeprefix(keys.RQ_QUEUE_KEY_PREFIX))
            for key in queues
            if key.startswith(prefix)
        )

    def status(self, function_names: list[str]) -> QueueStatus:
        """A read-only snapshot of every place a job can be (three round trips; nothing is locked, so
        a job moving meanwhile may be counted in two places or in none)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in function_names:
            pipe.llen(keys.queue_key(name))
            pipe.zrange(keys.workers(name), 0, -1, withscores=True)
            pipe.zcard(keys.scheduled(name))
            pipe.hlen(keys.quarantine(name))
        replies = pipe.execute()
        seconds, micros = self.redis.time()  # a cluster pipeline refuses keyless TIME: its own trip
        now_ms = seconds * 1000 + micros // 1000
        per_function = [replies[i : i + 4] for i in range(0, len(replies), 4)]
        leases = {
            name: [(as_text(w), d) for w, d in row[1]] for name, row in zip(function_names, per_function, strict=True)
        }
        holding = self.redis.pipeline(transaction=False)
        for name, workers in leases.items():
            for worker_id, _ in workers:
                holding.llen(keys.processing(name, worker_id))
        held = iter(holding.execute())
        running = {name: sum(int(next(held)) for _ in workers) for name, workers in leases.items()}
        live = {name: {w for w, deadline in workers if deadline > now_ms} for name, workers in leases.items()}
        alive = set().union(*live.values()) if live else set()
        everyone = {w for workers in leases.values() for w, _ in workers}
        return QueueStatus(
            queued={name: int(row[0]) for name, row in zip(function_names, per_function, strict=True)},
            running=running,
            scheduled={name: int(row[2]) for name, row in zip(function_names, per_function, strict=True)},
            quarantined={name: int(row[3]) for name, row in zip(function_names, per_function, strict=True)},
            workers_alive=len(alive),
            workers_expired=len(everyone - alive),
            workers_serving={name: len(live[name]) for name in function_names},
        )

    def quarantined(self, function_names: list[str] | None = None) -> list[QuarantinedJob]:
        """The quarantined jobs of the functions (by default every function in rq's registry), oldest first."""
        names = self.registered_functions() if function_names is None else function_names
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.quarantine(name))
        raw = [
            (name, as_text(job_id), document)
            for name, found in zip(names, pipe.execute(), strict=True)
            for job_id, document in cast(dict[bytes, bytes], found).items()
        ]
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id, _ in raw:
            pipe.hexists(keys.job(job_id), "data")
        found = pipe.execute()
        jobs = []
        for (name, job_id, document), has_data in zip(raw, found, strict=True):
            details = _reason(document)
            jobs.append(
                QuarantinedJob(
                    job_id=job_id,
                    function_name=name,
                    reason=str(details.get("reason", "")),
                    quarantined_at=float(details.get("at", 0.0)),
                    has_data=bool(has_data),
                )
            )
        return sorted(jobs, key=lambda job: job.quarantined_at)

    def quarantine_size(self, function_names: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in function_names:
            pipe.hlen(keys.quarantine(name))
        return sum(int(n) for n in pipe.execute())

    def held(self, worker_id: str, function_names: list[str]) -> set[str]:
        """The entries the worker's processing lists of the functions hold now."""
        pipe = self.redis.pipeline(transaction=False)
        for name in function_names:
            pipe.lrange(keys.processing(name, worker_id), 0, -1)
        return {as_text(entry) for entries in pipe.execute() for entry in entries}


def _reason(document: bytes) -> dict[str, Any]:
    try:
        details = json.loads(document)
    except ValueError:
        return {"reason": as_text(document)}
    return details if isinstance(details, dict) else {"reason": str(details)}


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
