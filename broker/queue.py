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

Each function lives in one Redis Cluster slot (`broker.keys`), and every script works on one
function: a worker serving several functions claims, renews its lease, recovers and promotes
function by function, and its fencing is per function (a claim checks the worker's lease in the
claimed function's slot; a completion checks the claim's own entry). A completion's followups are
always the same function's (retries, throttle backoff, destination retries, the reply), so they stay
in the completion's step; an outcome delivered to another function (a Function destination) is an
ordinary enqueue made before the commit, at-least-once as every destination write is.

Waiting for work: one BLPOP over the wake lists of every function served, except on a cluster when
they span slots (a multi-key BLPOP must stay in one slot): then the worker waits on each function in
turn for `CLUSTER_WAIT_SLICE_SECONDS`, so a job of a function it is not waiting on right now is
noticed up to one slice late.

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
from broker.connection import is_cluster, wait_for_replicas
from broker.errors import ConfigError, StoreUnavailable
from broker.invocation import Invocation, Result
from broker.job_codec import UndecodableJobError, decode
from broker.queue_inspection import QueueInspection, as_text

BLOCK_SLICE_SECONDS = 2.0
CLUSTER_WAIT_SLICE_SECONDS = 0.1  # a multi-function worker on a cluster waits on one function this long at a time
REPLY_TTL_SECONDS = 3600
SCRIPT_NAMES = (
    "ENQUEUE",
    "CLAIM",
    "START",
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


class CrossFunctionFollowupError(ValueError):
    """A completion was asked to write a job or reply of another function than the finished job's.

    A bug in the caller, never retryable: the completion's step is one function's slot, so another
    function's job could not be written in it (deliver it as an ordinary enqueue before committing)."""


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
    lease_lost: bool = False  # the worker held no live lease for a function; it must renew before claiming it


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
    """Enqueue, claim, complete, schedule, quarantine and hand back invocations on one Redis or a Cluster.

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
        if durable_replicas and is_cluster(redis):
            raise ConfigError(
                ["Headwater.DurableReplicas: WAIT needs one connection to one primary; not available on Redis Cluster"],
                "Redis URL",
            )
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds
        self.durable_replicas = durable_replicas
        self.durable_wait_timeout_ms = durable_wait_timeout_ms
        self._scripts = {name: redis.register_script(getattr(queue_scripts, name)) for name in SCRIPT_NAMES}
        self._rotation = 0
        self._claims = 0
        self._token_prefix = uuid.uuid4().hex[:12]  # claim tokens are unique across every worker
        self._registered: set[str] = set()  # functions whose queue this process added to rq's registry

    # -- producers ---------------------------------------------------------------------------
    def enqueue(self, invocation: Invocation, delay_seconds: float = 0.0) -> str:
        """Store the invocation as a job (with a delay it waits in the schedule); return its id.

        In durable mode this returns only once `durable_replicas` replicas hold the job."""
        job_id, arguments = job_arguments(invocation, delay_seconds)
        self._register([invocation.function_name])
        schedule = [keys.scheduled(invocation.function_name)]
        if not self.durable_replicas:
            self._run("ENQUEUE", schedule, arguments)
            return job_id
        # WAIT counts only the writes of the connection that sends it: write and wait on one.
        pinned = self.redis.client()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            self._scripts["ENQUEUE"](keys=schedule, args=[*SCRIPT_LAYOUT, *arguments], client=pinned)
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
        round trip where it can (a pipeline: the write, then BLPOP on the reply key, both in the
        function's slot), so a fast call is answered without a second trip. A refused write raises as
        `enqueue` would, once the pop has timed out: keep the timeout short and continue with
        `wait_for_reply`.

        In durable mode the write is acknowledged by the replicas (`enqueue`) before the wait starts."""
        assert invocation.reply_to is not None, "only a call someone waits for has a reply key"
        if self.durable_replicas:
            self.enqueue(invocation)
            return self.pop_reply(invocation.reply_to, timeout_seconds)
        arguments = job_arguments(invocation, 0.0)[1]
        self._register([invocation.function_name])
        schedule = [keys.scheduled(invocation.function_name)]
        pipe = self.redis.pipeline(transaction=False)
        self._send(pipe, "ENQUEUE", schedule, arguments)
        pipe.blpop([invocation.reply_to], timeout=timeout_seconds)
        stored, popped = pipe.execute(raise_on_error=False)
        if isinstance(stored, NoScriptError):  # Redis lost its scripts (restart): nothing was written
            self._run("ENQUEUE", schedule, arguments)
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
        every stored one a `StoreUnavailable`, as `enqueue` would. On a cluster the pipeline is split
        by node (one batch each), each ENQUEUE still in its own function's slot."""
        prepared = [job_arguments(invocation, 0.0) for invocation in invocations]
        if not prepared:
            return []
        self._register([invocation.function_name for invocation in invocations])
        records = [
            ([keys.scheduled(invocation.function_name)], arguments)
            for invocation, (_, arguments) in zip(invocations, prepared, strict=True)
        ]
        answers, acknowledged = self._enqueue_pipeline(records)
        outcomes: list[str | Exception] = []
        for (job_id, _), answer in zip(prepared, answers, strict=True):
            if isinstance(answer, Exception):
                outcomes.append(answer)
            elif acknowledged is not None and acknowledged < self.durable_replicas:
                outcomes.append(self._too_few_replicas(job_id, acknowledged))
            else:
                outcomes.append(job_id)
        return outcomes

    def _enqueue_pipeline(self, records: list[tuple[list[str], list[Any]]]) -> tuple[list[Any], int | None]:
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
                self._send(pipe, "ENQUEUE", *records[index])
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

    def _register(self, function_names: Sequence[str]) -> None:
        """Add the functions' queues to rq's registry once per process: a global set, so a plain SADD
        outside the slot scripts (rq's tools and `headwater quarantine list` find queues there)."""
        new = sorted(set(function_names) - self._registered)
        if new:
            self.redis.sadd(keys.RQ_QUEUES, *(keys.queue_key(name) for name in new))
            self._registered.update(new)

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
        """Move up to `max_jobs` jobs into the worker's processing lists; the first is marked started.

        One CLAIM per function (each in its slot), starting from a rotating function, until
        `max_jobs` are held or every function was asked. With `wait_seconds`, first wait (up to that
        long) for a wake token of one of the functions; for a single function the wait and the claim
        go in one pipeline, so Redis runs the claim the moment the wait ends. Jobs that cannot be
        decoded are quarantined here and not returned."""
        if not function_names:
            return Claimed([], [])
        self._rotation = (self._rotation + 1) % len(function_names)
        self._claims += 1
        order = function_names[self._rotation :] + function_names[: self._rotation]
        token = f"{self._token_prefix}{self._claims}"
        first: list[Any] | None = None
        if wait_seconds > 0 and len(order) == 1:
            first = self._claim_after_wait(
                order[0], wait_seconds, self._claim_call(worker_id, order[0], max_jobs, token)
            )
        elif wait_seconds > 0:
            order = self._wait_for_wake(order, wait_seconds)
        claims: list[Claim] = []
        quarantined: list[str] = []
        lease_lost = False
        for name in order:
            if len(claims) >= max_jobs:
                break
            if first is not None:
                raw, first = first, None
            else:
                raw = cast(
                    list[Any],
                    self._run("CLAIM", *self._claim_call(worker_id, name, max_jobs - len(claims), token, not claims)),
                )
            if int(raw[0]) < 0:
                lease_lost = True
                continue
            quarantined += [name] * int(raw[1])
            claims += self._decoded(worker_id, raw, quarantined)
        return Claimed(claims, quarantined, lease_lost)

    @staticmethod
    def _claim_call(
        worker_id: str, function_name: str, max_jobs: int, token: str, mark_first: bool = True
    ) -> tuple[list[str], list[Any]]:
        """CLAIM's keys and arguments for one function."""
        script_keys = [
            keys.processing(function_name, worker_id),
            keys.workers(function_name),
            keys.quarantine(function_name),
        ]
        return script_keys, [worker_id, max_jobs, token, keys.queue_name(function_name), "1" if mark_first else "0"]

    def _decoded(self, worker_id: str, raw: list[Any], quarantined: list[str]) -> list[Claim]:
        """The claims of one CLAIM reply; an undecodable job is quarantined (its function noted)."""
        claims: list[Claim] = []
        for i in range(2, len(raw), 3):
            entry = as_text(raw[i])
            try:
                claims.append(Claim(entry, decode(raw[i + 1]), int(raw[i + 2])))
            except UndecodableJobError as error:
                if self.quarantine(worker_id, entry, str(error)):
                    quarantined.append(_function_of_entry(entry))
        return claims

    def _wait_for_wake(self, function_names: list[str], wait_seconds: float) -> list[str]:
        """Wait up to `wait_seconds` for a wake token of one of the functions; return the functions
        in the order to claim them (the woken one first). One BLPOP over every wake list, except on a
        cluster, where the lists span slots: there one function at a time, a short slice each."""
        wakes = {keys.wake(keys.queue_name(name)): name for name in function_names}
        if not is_cluster(self.redis):
            popped = self.redis.blpop(list(wakes), timeout=wait_seconds)
            return _woken_first(function_names, None if popped is None else wakes.get(as_text(popped[0])))
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            for name in function_names:
                if self.redis.blpop([keys.wake(keys.queue_name(name))], timeout=CLUSTER_WAIT_SLICE_SECONDS):
                    return _woken_first(function_names, name)
        return function_names

    def _claim_after_wait(
        self, function_name: str, wait_seconds: float, call: tuple[list[str], list[Any]]
    ) -> list[Any]:
        """CLAIM's reply, sent behind a BLPOP on the function's wake tokens (one slot). A claim that
        met NOSCRIPT (Redis lost its scripts) did nothing and is sent again once the script is loaded."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.blpop([keys.wake(keys.queue_name(function_name))], timeout=wait_seconds)
        self._send(pipe, "CLAIM", *call)
        woken, raw = pipe.execute(raise_on_error=False)
        if isinstance(raw, NoScriptError):
            return cast(list[Any], self._run("CLAIM", *call))
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
        next prefetched job started. Safe to retry: a second application finds the claim gone.

        Successors and the reply must be the finished job's function's (`CrossFunctionFollowupError`). A
        next job of another function is marked started in a second step of its own slot."""
        function = _function_of_entry(finished.entry)
        same_function = next_claim is not None and _function_of_entry(next_claim.entry) == function
        arguments: list[str | bytes | int | float] = [
            finished.entry,
            next_claim.entry if next_claim and same_function else "",
        ]
        for invocation, delay in enqueue or ():
            if invocation.function_name != function:
                raise CrossFunctionFollowupError(
                    f"a completion of {function} cannot write a job of {invocation.function_name}"
                )
            arguments += job_arguments(invocation, delay)[1]
        if reply is not None:
            # a caller of the previous release names an untagged key: fine on one Redis, not on a cluster
            if keys.tag(function) not in reply[0] and is_cluster(self.redis):
                raise CrossFunctionFollowupError(f"a completion of {function} cannot write the reply key {reply[0]}")
            arguments += ["reply", reply[0], reply[1].to_wire(), REPLY_TTL_SECONDS]
        complete_keys = [keys.processing(function, worker_id), keys.scheduled(function)]
        applied, next_starts = cast(list[int], self._run("COMPLETE", complete_keys, arguments))
        if next_claim is not None and not same_function:
            next_function = _function_of_entry(next_claim.entry)
            next_starts = cast(int, self._run("START", [keys.processing(next_function, worker_id)], [next_claim.entry]))
        return Completion(bool(applied), None if int(next_starts) < 0 else int(next_starts))

    def quarantine(self, worker_id: str, entry: str, reason: str) -> bool:
        """Move a held job aside with its reason (fenced); False if it was no longer ours."""
        queue = keys.split_entry(entry)[0]
        function = keys.function_of_queue(queue)
        document = json.dumps({"queue": queue, "reason": reason, "at": time.time()})
        script_keys = [keys.processing(function, worker_id), keys.quarantine(function)]
        return bool(self._run("QUARANTINE", script_keys, [entry, document]))

    def requeue_quarantined(self, function_name: str, job_id: str) -> bool:
        return bool(self._run("REQUEUE", [keys.quarantine(function_name)], [job_id]))

    def drop_quarantined(self, function_name: str, job_id: str) -> bool:
        return bool(self._run("DROP", [keys.quarantine(function_name)], [job_id]))

    def hand_back(self, worker_id: str, function_names: Sequence[str]) -> int:
        """Return every job the worker holds to the front of its queue (shutdown)."""
        calls: list[tuple[str, Sequence[str], Sequence[Any]]] = [
            ("HAND_BACK", [keys.processing(name, worker_id)], []) for name in function_names
        ]
        return sum(int(reply) for reply in self._run_many(calls))

    def promote_due(self, function_names: Sequence[str]) -> int:
        """Move the functions' due retries and backoffs to their queues (one PROMOTE per function)."""
        return sum(
            int(reply) for reply in self._run_many([("PROMOTE", [keys.scheduled(n)], []) for n in function_names])
        )

    def heartbeat(self, worker_id: str, function_names: Sequence[str]) -> Lease:
        """Renew the worker's lease in each function's slot (one pipelined HEARTBEAT per function).
        `renewed` is False when any of them was not held before this beat."""
        # a function served is listed (`headwater quarantine list`) even before its first job
        self._register(function_names)
        ttl_ms, outage_ms, _ = self._lease_args()
        calls: list[tuple[str, Sequence[str], Sequence[Any]]] = [
            ("HEARTBEAT", [keys.workers(name), keys.clock(name)], [worker_id, ttl_ms, outage_ms])
            for name in function_names
        ]
        replies = self._run_many(calls)
        return Lease(all(int(renewed) for renewed, _ in replies), sum(int(graced) for _, graced in replies))

    def retire(self, worker_id: str, function_names: Sequence[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)  # one key each: fine across slots
        for name in function_names:
            pipe.zrem(keys.workers(name), worker_id)
        pipe.execute()

    def recover_dead_workers(self, function_names: Sequence[str]) -> int:
        """Hand back the jobs of every worker whose lease of one of the functions lapsed; safe to run
        from many places. One atomic RECOVER per function, each in its slot."""
        outage_ms, grace_ms = self._lease_args()[1:]
        calls = [
            ("RECOVER", [keys.workers(n), keys.clock(n)], [keys.processing_prefix(n), outage_ms, grace_ms])
            for n in function_names
        ]
        return sum(int(reply) for reply in self._run_many(calls))

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

    def _run_many(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Run independent scripts in one pipeline (not a transaction: on a cluster it is split by
        node); one that met NOSCRIPT ran nothing and is run again on its own. Raises the first error."""
        if len(calls) == 1:
            return [self._run(*calls[0])]
        pipe = self.redis.pipeline(transaction=False)
        for call in calls:
            self._send(pipe, *call)
        replies = pipe.execute(raise_on_error=False)
        answers: list[Any] = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
            answers.append(self._run(*call) if isinstance(reply, NoScriptError) else reply)
        return answers

    def _send(self, pipe: Pipeline, script: str, script_keys: Sequence[str], arguments: Sequence[Any]) -> None:
        """Queue one script on a pipeline by its hash, as `_run` would run it; the caller answers NOSCRIPT."""
        # execute_command: a cluster pipeline refuses `evalsha()` by name, yet routes EVALSHA by its keys
        sha = self._scripts[script].sha
        pipe.execute_command("EVALSHA", sha, len(script_keys), *script_keys, *SCRIPT_LAYOUT, *arguments)  # type: ignore[no-untyped-call]  # untyped in redis-py


def job_arguments(invocation: Invocation, delay_seconds: float) -> tuple[str, list[Any]]:
    """A new job's id and the job as the scripts' 'job' record: queue, id, delay, field count, fields
    (see `job_codec`). The id is made so that the job's hash shares its queue's slot (`keys.job_id`).
    Shared with `broker.queue_async`, so both producers store the same job."""
    job_id = keys.job_id(invocation.function_name)
    delay = repr(float(delay_seconds)) if delay_seconds > 0 else ""
    queue = keys.queue_name(invocation.function_name)
    return job_id, ["job", queue, job_id, delay, 1, "data", job_codec.encode(invocation)]


def too_few_replicas(job_id: str, acknowledged: int, replicas: int, timeout_ms: int) -> StoreUnavailable:
    """The error of a durable write that fewer than `replicas` replicas acknowledged in time."""
    return StoreUnavailable(
        f"invocation {job_id} reached {acknowledged} of {replicas} required replica(s) "
        f"within {timeout_ms} ms (Headwater.DurableReplicas); retry the call"
    )


def _function_of_entry(entry: str) -> str:
    return keys.function_of_queue(keys.split_entry(entry)[0])


def _woken_first(function_names: list[str], woken: str | None) -> list[str]:
    """The functions to claim from, the one whose wake token was popped first."""
    if woken is None:
        return function_names
    return [woken, *(name for name in function_names if name != woken)]
