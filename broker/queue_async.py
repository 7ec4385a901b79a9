"""The invocation queue's producer side on redis.asyncio: what a poller needs to hand a batch to the
workers and await its result without leaving the event loop.

`InvocationQueue` (broker/queue.py) is the synchronous store every other producer and the workers
use; a poller serves its sources on one event loop, and a thread hop per call to reach that store
cost it milliseconds of latency and loop time per batch. This module stores the very same job (the
same ENQUEUE script, with `queue.job_arguments` and `queue.SCRIPT_LAYOUT`), so a worker cannot tell
which producer wrote it, and reads replies and job state the way `InvocationQueue` does.

Errors are redis-py's, as `broker.connection` exports them (`StoreError` and its kinds), plus
`StoreUnavailable` when a durable write reached too few replicas: the caller decides how to retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import keys, queue_scripts
from broker.connection import StoreScriptMissing
from broker.invocation import Invocation, Result
from broker.queue import SCRIPT_LAYOUT, job_arguments, too_few_replicas

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Sent:
    """A stored job's id, and its result when it came within the first wait (None: wait on)."""

    job_id: str
    result: Result | None


class AsyncInvocationQueue:
    """Enqueue a call someone waits for, pop its reply, and tell whether its job can still answer."""

    def __init__(self, redis: Redis, durable_replicas: int = 0, durable_wait_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.durable_replicas = durable_replicas
        self.durable_wait_timeout_ms = durable_wait_timeout_ms
        self._enqueue_script = redis.register_script(queue_scripts.ENQUEUE)
        self._registered: set[str] = set()  # functions whose queue this process added to rq's registry

    async def enqueue(self, invocation: Invocation) -> str:
        """Store the invocation as a job, as `InvocationQueue.enqueue` does; return its id.

        In durable mode this returns only once `durable_replicas` replicas hold the job, else raises
        `StoreUnavailable` (the job may be stored all the same: a retry may run it twice)."""
        job_id, arguments = job_arguments(invocation, 0.0)
        schedule = await self._register(invocation.function_name)
        if not self.durable_replicas:
            await self._enqueue_script(keys=schedule, args=[*SCRIPT_LAYOUT, *arguments])
            return job_id
        # WAIT counts only the writes of the connection that sends it: write and wait on one.
        pinned = self.redis.client()
        try:
            await self._enqueue_script(keys=schedule, args=[*SCRIPT_LAYOUT, *arguments], client=pinned)
            acknowledged = int(await pinned.wait(self.durable_replicas, self.durable_wait_timeout_ms))
        finally:
            await pinned.aclose()
        if acknowledged < self.durable_replicas:
            raise too_few_replicas(job_id, acknowledged, self.durable_replicas, self.durable_wait_timeout_ms)
        return job_id

    async def enqueue_and_pop_reply(self, invocation: Invocation, timeout_seconds: float) -> Sent:
        """Store a call that has a `reply_to` and wait up to `timeout_seconds` for its result, in one
        round trip (a pipeline: the write, then BLPOP on the reply key), so a fast call is answered
        without a second trip. A refused write raises once the pop has timed out: keep the timeout
        short and go on with `pop_reply`. A lost connection raises too, and the job may be stored;
        a pop refused on its own (the write went through) returns no result: pop again.

        In durable mode the write is acknowledged by the replicas (`enqueue`) before the wait starts."""
        reply_to = invocation.reply_to
        assert reply_to is not None, "only a call someone waits for has a reply key"
        if self.durable_replicas:
            job_id = await self.enqueue(invocation)
            return Sent(job_id, await self.pop_reply(reply_to, timeout_seconds))
        job_id, arguments = job_arguments(invocation, 0.0)
        schedule = await self._register(invocation.function_name)
        pipe = self.redis.pipeline(transaction=False)  # the job and its reply key share the function's slot
        # execute_command: a cluster pipeline refuses `evalsha()` by name, yet routes EVALSHA by its keys
        pipe.execute_command("EVALSHA", self._enqueue_script.sha, len(schedule), *schedule, *SCRIPT_LAYOUT, *arguments)
        pipe.blpop([reply_to], timeout=timeout_seconds)
        stored, popped = await pipe.execute(raise_on_error=False)
        if isinstance(stored, StoreScriptMissing):  # nothing was written: load the script with the write
            await self._enqueue_script(keys=schedule, args=[*SCRIPT_LAYOUT, *arguments])
            return Sent(job_id, await self.pop_reply(reply_to, timeout_seconds))
        if isinstance(stored, Exception):
            raise stored
        # The job is stored: a pop that failed alone is the caller's next pop to retry, not a reason to write again.
        return Sent(job_id, None if isinstance(popped, Exception) else _result(popped))

    async def pop_reply(self, reply_to: str, timeout_seconds: float) -> Result | None:
        """The call's result if it comes within `timeout_seconds` (keep it under the socket timeout)."""
        return _result(await self.redis.blpop([reply_to], timeout=timeout_seconds))

    async def take_reply(self, reply_to: str) -> Result | None:
        """The call's result if it is there now, without blocking: the last look once its job is gone."""
        popped = await self.redis.lpop(reply_to)
        return Result.from_wire(popped) if isinstance(popped, bytes | str) else None

    async def job_pending(self, function_name: str, job_id: str) -> bool:
        """Whether the function's job still exists and is not quarantined (its outcome may still come),
        as `QueueInspection.job_pending` tells it."""
        pipe = self.redis.pipeline(transaction=False)  # the job's hash and its quarantine share a slot
        pipe.exists(keys.job(job_id))
        pipe.hexists(keys.quarantine(function_name), job_id)
        exists, quarantined = await pipe.execute()
        return bool(exists) and not quarantined

    async def _register(self, function_name: str) -> list[str]:
        """Add the function's queue to rq's registry once per process, as `InvocationQueue` does (a
        plain SADD: the registry is one global set); the ENQUEUE keys of the function (its schedule)."""
        if function_name not in self._registered:
            await self.redis.sadd(keys.RQ_QUEUES, keys.queue_key(function_name))
            self._registered.add(function_name)
        return [keys.scheduled(function_name)]

    async def close(self) -> None:
        await self.redis.aclose()


def _result(popped: Any) -> Result | None:
    """A BLPOP's answer, (key, value) or None, as the result it carries."""
    return None if popped is None else Result.from_wire(popped[1])
