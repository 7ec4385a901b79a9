"""The invocation queue: the only place that knows how invocations are stored in Redis.

Producers store jobs in rq's JSON job form (never pickle; see `broker.job_codec`, the only module
that reads or writes a job's data) on one rq-named queue per function, so a backlog on one function
never sits in front of another and rq's tools and KEDA's list trigger can see the queues.
A job is always in exactly one place: a function queue, the schedule, one worker's processing
list, or the quarantine.

The protocol is fenced. A worker may claim only while it holds a live lease (a heartbeat judged on
Redis's clock). Each claim carries a token; completing, quarantining or marking a job started
applies only while the worker still holds that very claim, in one atomic script, and is otherwise
a no-op that the caller counts and logs. When a lease lapses, one atomic step hands the worker's
jobs back to the front of their queues; the worker's late acknowledgement can then no longer
destroy a job that has moved on. A completion and its followups (retries, destination retries,
the reply to a waiting caller) are written in the same step, so a commit retried after an
ambiguous failure (the connection dropped after Redis applied it) finds its claim gone and
writes nothing twice.

A lease that lapsed because Redis itself was away (restart, freeze, partition of every worker) is
not taken for a dead worker: when nobody has renewed any lease for a while, every lease gets a
fresh grace period first (see `queue_scripts.observe_clock`).

A job that cannot be decoded (its hash is missing, its data is not what we wrote) is moved to the
quarantine with its reason instead of being run, so it can stop nothing but itself.

rq's own worker is not used to consume: it forks per job (losing warm handlers and metrics) and
pops with BLPOP, which drops a job if the worker dies between the pop and its bookkeeping.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from broker import job_codec, keys, queue_scripts
from broker.connection import wait_for_replicas
from broker.errors import StoreUnavailable
from broker.invocation import Invocation, Result
from broker.job_codec import UndecodableJobError, decode
from broker.queue_inspection import QueueInspection, as_text

BLOCK_SLICE_SECONDS = 2.0
REPLY_TTL_SECONDS = 3600
SCRIPT_NAMES = (
    "ENQUEUE",
    "CLAIM",
    "COMPLETE",
    "HEARTBEAT",
    "RECOVER",
    "HAND_BACK",
    "PROMOTE",
    "QUARANTINE",
    "REQUEUE",
    "DROP",
)
SCRIPT_LAYOUT = (keys.RQ_QUEUE_KEY_PREFIX, keys.RQ_JOB_KEY_PREFIX, keys.WAKE_PREFIX)
"""The first ARGV of every queue script, in the order `queue_scripts.PRELUDE` reads them: the prefixes
of the keys the scripts build from a name, so the scripts spell no key of their own."""
JOB_WRITE_KEYS = (keys.SCHEDULED, keys.RQ_QUEUES)
"""The fixed keys of a script that writes jobs (ENQUEUE, COMPLETE): the schedule, rq's queue registry."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A job a worker holds: where it came from, what it asks, how many runs began before."""

    entry: str
    invocation: Invocation
    starts: int  # 0 until the worker begins it; >1 means earlier runs were cut off by a crash

    @property
    def job_id(self) -> str:
        return keys.split_entry(self.entry)[1]


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim call gave: the decoded jobs, and the functions of jobs sent to quarantine."""

    claims: list[Claim]
    quarantined: list[str]  # one function name per job quarantined by this claim
    lease_lost: bool = False  # the worker held no live lease; it must renew before claiming


@dataclass(frozen=True, slots=True)
class Completion:
    """How a commit went: `applied` False means the claim was no longer ours (nothing written);
    `next_starts` is the next prefetched job's start count, or None when it is no longer ours."""

    applied: bool
    next_starts: int | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A heartbeat's answer: `renewed` False means the worker held no lease before this beat."""

    renewed: bool
    graced: int  # leases extended because Redis had been away


class InvocationQueue(QueueInspection):
    """Enqueue, claim, complete, schedule, quarantine and hand back invocations on one Redis.

    What only looks (depths, `status`, the quarantine's listing, a worker's held jobs) is inherited
    from `QueueInspection`, which `headwater status` can use alone."""

    def __init__(
        self,
        redis: Redis,
        heartbeat_ttl_seconds: float = 15.0,
        durable_replicas: int = 0,
        durable_wait_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(redis)
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds
        self.durable_replicas = durable_replicas
        self.durable_wait_timeout_ms = durable_wait_timeout_ms
        self._scripts = {name: redis.register_script(getattr(queue_scripts, name)) for name in SCRIPT_NAMES}
        self._rotation = 0
        self._claims = 0
        self._token_prefix = uuid.uuid4().hex[:12]  # claim tokens are unique across every worker

    # -- producers ---------------------------------------------------------------------------
    def enqueue(self, invocation: Invocation, delay_seconds: float = 0.0) -> str:
        """Store the invocation as a job (with a delay it waits in the schedule); return its id.

        In durable mode this returns only once `durable_replicas` replicas hold the job."""
        job_id, arguments = job_arguments(invocation, delay_seconds)
        if not self.durable_replicas:
            self._run("ENQUEUE", JOB_WRITE_KEYS, arguments)
            return job_id
        # WAIT counts only the writes of the connection that sends it: write and wait on one.
        pinned = self.redis.client()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            self._scripts["ENQUEUE"](keys=JOB_WRITE_KEYS, args=[*SCRIPT_LAYOUT, *arguments], client=pinned)
            acknowledged = wait_for_replicas(pinned, self.durable_replicas, self.durable_wait_timeout_ms)
        finally:
            pinned.close()
        if acknowledged < self.durable_replicas:
            # The job may still be stored (the caller's retry can then run it twice: at-least-once),
            # but only an acknowledged invocation is sure to survive the loss of the primary.
            raise self._too_few_replicas(job_id, acknowledged)
        return job_id

    def enqueue_and_pop_reply(self, invocation: Invocation, timeout_seconds: float) -> Result | None:
        """Store a call that has a `reply_to` and wait up to `timeout_seconds` for its result, in one
        round trip where it can (a pipeline: the write, then BLPOP on the reply key), so a fast call
        is answered without a second trip. A refused write raises as `enqueue` would, once the pop
        has timed out: keep the timeout short and continue with `wait_for_reply`.

        In durable mode the write is acknowledged by the replicas (`enqueue`) before the wait starts."""
        assert invocation.reply_to is not None, "only a call someone waits for has a reply key"
        if self.durable_replicas:
            self.enqueue(invocation)
            return self.pop_reply(invocation.reply_to, timeout_seconds)
        arguments = job_arguments(invocation, 0.0)[1]
        pipe = self.redis.pipeline(transaction=False)
        self._send(pipe, "ENQUEUE", JOB_WRITE_KEYS, arguments)
        pipe.blpop([invocation.reply_to], timeout=timeout_seconds)
        stored, popped = pipe.execute(raise_on_error=False)
        if isinstance(stored, NoScriptError):  # Redis lost its scripts (restart): nothing was written
            self._run("ENQUEUE", JOB_WRITE_KEYS, arguments)
            return self.pop_reply(invocation.reply_to, timeout_seconds)
        if isinstance(stored, Exception):
            raise stored
        if isinstance(popped, Exception):
            raise popped
        return None if popped is None else Result.from_wire(popped[1])

    def enqueue_many(self, invocations: Sequence[Invocation]) -> list[str | Exception]:
        """Store several invocations in one round trip: a pipeline (not a transaction) of ENQUEUE calls.

        For callers accepting many invocations at once (the API's concurrent `Event` requests), where a
        round trip each would cost more than the writes. Each invocation is stored or not on its own:
        the answer holds, in order, its job id or the error Redis gave for it (e.g. OOM). An error of
        the connection itself raises, and any of them may have been stored. In durable mode one WAIT,
        sent on the pipeline's own connection after the writes, covers them all; too few replicas makes
        every stored one a `StoreUnavailable`, as `enqueue` would."""
        prepared = [job_arguments(invocation, 0.0) for invocation in invocations]
        if not prepared:
            return []
        answers, acknowledged = self._enqueue_pipeline([arguments for _, arguments in prepared])
        outcomes: list[str | Exception] = []
        for (job_id, _), answer in zip(prepared, answers, strict=True):
            if isinstance(answer, Exception):
                outcomes.append(answer)
            elif acknowledged is not None and acknowledged < self.durable_replicas:
                outcomes.append(self._too_few_replicas(job_id, acknowledged))
            else:
                outcomes.append(job_id)
        return outcomes

    def _enqueue_pipeline(self, records: list[list[Any]]) -> tuple[list[Any], int | None]:
        """`enqueue_many`'s round trip: each record's reply (or error), and how many replicas
        acknowledged them (None unless durable). NOSCRIPT (Redis restarted or flushed its scripts)
        ran nothing, so those records are sent once more after loading the script."""
        script = self._scripts["ENQUEUE"]
        answers: list[Any] = [None] * len(records)
        acknowledged: int | None = None
        pending = list(range(len(records)))
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for index in pending:
                self._send(pipe, "ENQUEUE", JOB_WRITE_KEYS, records[index])
            if self.durable_replicas:  # on the pipeline's own connection: WAIT counts only its writes
                pipe.wait(self.durable_replicas, self.durable_wait_timeout_ms)
            replies = pipe.execute(raise_on_error=False)
            if self.durable_replicas:
                wait_reply = replies.pop()
                reached = wait_reply if isinstance(wait_reply, int) else 0
                acknowledged = reached if acknowledged is None else min(acknowledged, reached)
            for index, reply in zip(pending, replies, strict=True):
                answers[index] = reply
            pending = [index for index in pending if isinstance(answers[index], NoScriptError)]
            if not pending or attempt:
                break
            self.redis.script_load(script.script)
        return answers, acknowledged

    # -- results for waiting callers ------------------------------------------------------------
    def wait_for_reply(self, reply_to: str, timeout_seconds: float) -> Result | None:
        """Block for the result in short slices: redis-py gives every socket read a 5 s timeout."""
        deadline = time.monotonic() + timeout_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            result = self.pop_reply(reply_to, min(remaining, BLOCK_SLICE_SECONDS))
            if result is not None:
                return result
        return None

    def pop_reply(self, reply_to: str, timeout_seconds: float) -> Result | None:
        popped = self.redis.blpop([reply_to], timeout=timeout_seconds)
        return None if popped is None else Result.from_wire(popped[1])

    # -- workers --------------------------------------------------------------------------------
    def claim(self, worker_id: str, function_names: list[str], max_jobs: int, wait_seconds: float = 0.0) -> Claimed:
        """Move up to `max_jobs` jobs into the worker's processing list; the first is marked started.

        With `wait_seconds`, first wait (up to that long) for a wake token of one of the functions:
        the wait and the claim go in one pipeline, so Redis runs the claim the moment the wait ends,
        without a round trip to the worker in between. Jobs that cannot be decoded are quarantined
        here and not returned."""
        if not function_names:
            return Claimed([], [])
        self._rotation = (self._rotation + 1) % len(function_names)
        self._claims += 1
        names = [keys.queue_name(name) for name in function_names]
        script_keys = [keys.processing(worker_id), keys.WORKERS, keys.QUARANTINE]
        arguments = [worker_id, max_jobs, self._rotation, f"{self._token_prefix}{self._claims}", *names]
        if wait_seconds > 0:
            raw = self._claim_after_wait(names, wait_seconds, script_keys, arguments)
        else:
            raw = cast(list[Any], self._run("CLAIM", script_keys, arguments))
        if int(raw[0]) < 0:
            return Claimed([], [], lease_lost=True)
        quarantined = [keys.function_of_queue(queue) for queue in as_text(raw[1]).split("\t") if queue]
        claims: list[Claim] = []
        for i in range(2, len(raw), 3):
            entry = as_text(raw[i])
            try:
                claims.append(Claim(entry, decode(raw[i + 1]), int(raw[i + 2])))
            except UndecodableJobError as error:
                if self.quarantine(worker_id, entry, str(error)):
                    quarantined.append(keys.function_of_queue(keys.split_entry(entry)[0]))
        return Claimed(claims, quarantined)

    def _claim_after_wait(
        self, queue_names: list[str], wait_seconds: float, script_keys: list[str], arguments: list[Any]
    ) -> list[Any]:
        """CLAIM's reply, sent behind a BLPOP on the wake tokens. A claim that met NOSCRIPT (Redis
        lost its scripts) did nothing and is sent again once the script is loaded."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.blpop([keys.wake(name) for name in queue_names], timeout=wait_seconds)
        self._send(pipe, "CLAIM", script_keys, arguments)
        woken, raw = pipe.execute(raise_on_error=False)
        if isinstance(raw, NoScriptError):
            return cast(list[Any], self._run("CLAIM", script_keys, arguments))
        for reply in (woken, raw):
            if isinstance(reply, Exception):
                raise reply
        return cast(list[Any], raw)

    def complete(
        self,
        worker_id: str,
        finished: Claim,
        next_claim: Claim | None = None,
        enqueue: list[tuple[Invocation, float]] | None = None,
        reply: tuple[str, Result] | None = None,
    ) -> Completion:
        """In one fenced step: forget the finished job, write its successors and reply, and mark the
        next prefetched job started. Safe to retry: a second application finds the claim gone."""
        arguments: list[str | bytes | int | float] = [finished.entry, next_claim.entry if next_claim else ""]
        for invocation, delay in enqueue or ():
            arguments += job_arguments(invocation, delay)[1]
        if reply is not None:
            arguments += ["reply", reply[0], reply[1].to_wire(), REPLY_TTL_SECONDS]
        complete_keys = [keys.processing(worker_id), *JOB_WRITE_KEYS]
        applied, next_starts = cast(list[int], self._run("COMPLETE", complete_keys, arguments))
        return Completion(bool(applied), None if int(next_starts) < 0 else int(next_starts))

    def quarantine(self, worker_id: str, entry: str, reason: str) -> bool:
        """Move a held job aside with its reason (fenced); False if it was no longer ours."""
        queue = keys.split_entry(entry)[0]
        document = json.dumps({"queue": queue, "reason": reason, "at": time.time()})
        return bool(self._run("QUARANTINE", [keys.processing(worker_id), keys.QUARANTINE], [entry, document]))

    def requeue_quarantined(self, job_id: str) -> bool:
        return bool(self._run("REQUEUE", [keys.QUARANTINE], [job_id]))

    def drop_quarantined(self, job_id: str) -> bool:
        return bool(self._run("DROP", [keys.QUARANTINE], [job_id]))

    def hand_back(self, worker_id: str) -> int:
        """Return every job the worker holds to the front of its queue (shutdown)."""
        return int(cast(int, self._run("HAND_BACK", [keys.processing(worker_id)], [])))

    def promote_due(self) -> int:
        return int(cast(int, self._run("PROMOTE", [keys.SCHEDULED], [])))

    def heartbeat(self, worker_id: str, function_names: list[str] | tuple[str, ...] = ()) -> Lease:
        """Renew the worker's lease; on its first beat it also records the functions it serves."""
        ttl_ms, outage_ms, _ = self._lease_args()
        renewed, graced = cast(
            list[int],
            self._run(
                "HEARTBEAT",
                [keys.WORKERS, keys.CLOCK, keys.WORKER_FUNCTIONS],
                [worker_id, ttl_ms, outage_ms, "\t".join(function_names)],
            ),
        )
        return Lease(bool(renewed), int(graced))

    def retire(self, worker_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.WORKERS, worker_id)
        pipe.hdel(keys.WORKER_FUNCTIONS, worker_id)
        pipe.execute()

    def recover_dead_workers(self) -> int:
        """Hand back the jobs of every worker whose lease lapsed; safe to run from many places."""
        outage_ms, grace_ms = self._lease_args()[1:]
        recover_keys = [keys.WORKERS, keys.CLOCK, keys.WORKER_FUNCTIONS]
        return int(cast(int, self._run("RECOVER", recover_keys, [keys.PROCESSING_PREFIX, outage_ms, grace_ms])))

    # -- internals ----------------------------------------------------------------------------------
    def _lease_args(self) -> tuple[int, int, int]:
        """(ttl ms, outage ms, grace ms): a silence of half a lease means Redis, not a worker, was away."""
        ttl_ms = int(self.heartbeat_ttl_seconds * 1000)
        return ttl_ms, ttl_ms // 2, ttl_ms

    def _too_few_replicas(self, job_id: str, acknowledged: int) -> StoreUnavailable:
        return too_few_replicas(job_id, acknowledged, self.durable_replicas, self.durable_wait_timeout_ms)

    def _run(self, script: str, script_keys: Sequence[str], arguments: Sequence[Any]) -> Any:
        """Run one script (loading it if Redis lost it), its arguments after the key layout."""
        return self._scripts[script](keys=script_keys, args=[*SCRIPT_LAYOUT, *arguments])

    def _send(self, pipe: Pipeline, script: str, script_keys: Sequence[str], arguments: Sequence[Any]) -> None:
        """Queue one script on a pipeline by its hash, as `_run` would run it; the caller answers NOSCRIPT."""
        pipe.evalsha(self._scripts[script].sha, len(script_keys), *script_keys, *SCRIPT_LAYOUT, *arguments)


def job_arguments(invocation: Invocation, delay_seconds: float) -> tuple[str, list[Any]]:
    """A new job's id and the job as the scripts' 'job' record: queue, id, delay, field count, fields
    (see `job_codec`). Shared with `broker.queue_async`, so both producers store the same job."""
    job_id = str(uuid.uuid4())
    delay = repr(float(delay_seconds)) if delay_seconds > 0 else ""
    queue = keys.queue_name(invocation.function_name)
    return job_id, ["job", queue, job_id, delay, 1, "data", job_codec.encode(invocation)]


def too_few_replicas(job_id: str, acknowledged: int, replicas: int, timeout_ms: int) -> StoreUnavailable:
    """The error of a durable write that fewer than `replicas` replicas acknowledged in time."""
    return StoreUnavailable(
        f"invocation {job_id} reached {acknowledged} of {replicas} required replica(s) "
        f"within {timeout_ms} ms (Headwater.DurableReplicas); retry the call"
    )
