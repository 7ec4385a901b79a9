"""Every Redis key Headwater writes, built in one place.

Function queues are rq queues (`rq:queue:headwater.<function>`), so rq's own tools can see them;
the rest is ours. Entries in processing lists and the schedule are `<queue name>\\t<job id>`, so
any process can put a job back where it came from without reading the job.

Nothing else spells a key or a prefix, the Lua scripts included: they get fixed keys in KEYS and
prefixes in ARGV (`queue.SCRIPT_LAYOUT`, `shard_leases`), and tests/workers/test_script_keys.py keeps
it so. The layout itself is fixed: rq's tools and KEDA's list trigger read these very keys.
"""

from __future__ import annotations

PREFIX = "headwater"
QUEUE_PREFIX = f"{PREFIX}."
RQ_QUEUE_KEY_PREFIX = "rq:queue:"
RQ_JOB_KEY_PREFIX = "rq:job:"
RQ_QUEUES = "rq:queues"  # set: the key of every rq queue, where rq's own tools look for queues
WAKE_PREFIX = f"{PREFIX}:wake:"  # per function queue: tokens that wake the workers serving it
SCHEDULED = f"{PREFIX}:scheduled"  # zset: entry -> due time (retries, throttle backoff)
WORKERS = f"{PREFIX}:workers"  # zset: worker id -> lease deadline (Redis's clock, ms)
WORKER_FUNCTIONS = f"{PREFIX}:worker-functions"  # hash: worker id -> the functions it serves, tab-separated
CLOCK = f"{PREFIX}:clock"  # Redis's time (ms) when any lease was last renewed: a stale one means Redis was away
QUARANTINE = f"{PREFIX}:quarantine"  # hash: job id -> JSON {queue, reason, at}; the job's hash is kept
PROCESSING_PREFIX = f"{PREFIX}:processing:"  # + worker id: list of the entries that worker holds
ENTRY_SEPARATOR = "\t"


def queue_name(function_name: str) -> str:
    return f"{QUEUE_PREFIX}{function_name}"


def function_of_queue(name: str) -> str:
    return name.removeprefix(QUEUE_PREFIX)


def wake(queue: str) -> str:
    return f"{WAKE_PREFIX}{queue}"


def processing(worker_id: str) -> str:
    return f"{PROCESSING_PREFIX}{worker_id}"


def concurrency(function_name: str) -> str:
    return f"{PREFIX}:concurrency:{function_name}"


def reply(request_id: str) -> str:
    return f"{PREFIX}:reply:{request_id}"


def mapping_state(uuid: str) -> str:
    """Hash: the State, StateTransitionReason, LastProcessingResult and LastModified of a mapping."""
    return f"{PREFIX}:mapping:{uuid}"


# -- configuration stored at run time through the API: see broker/mapping_store.py and ---------------
# -- broker/function_overrides.py (the only modules that touch these keys) ---------------------------
MAPPINGS = f"{PREFIX}:mappings"  # hash: UUID -> JSON record of a mapping created through the API
MAPPINGS_GENERATION = f"{PREFIX}:mappings:generation"  # counter: bumped by every change to MAPPINGS
FUNCTION_CONCURRENCY = f"{PREFIX}:function-concurrency"  # hash: function -> ReservedConcurrentExecutions
FUNCTION_EVENT_INVOKE_CONFIG = f"{PREFIX}:function-event-invoke-config"  # hash: function -> JSON record
FUNCTION_OVERRIDES_GENERATION = f"{PREFIX}:function-overrides:generation"  # counter: bumped by every change


def entry(queue: str, job_id: str) -> str:
    return f"{queue}{ENTRY_SEPARATOR}{job_id}"


def split_entry(value: str) -> tuple[str, str]:
    """(queue, job id) of a schedule or processing entry; a processing entry's claim token follows."""
    queue, job_id, *_ = value.split(ENTRY_SEPARATOR, 2)
    return queue, job_id


# -- shard leases (Kinesis, DynamoDB Streams): see broker/shard_leases.py ----------------------------
SHARD_PREFIX = f"{PREFIX}:shard:"


def shard_lease_prefix(uuid: str) -> str:
    """Prefix of a mapping's per-shard lease hashes; the scripts append the shard id."""
    return f"{SHARD_PREFIX}{uuid}:"


def shard_lease(uuid: str, shard_id: str) -> str:
    """Hash: owner, fencing token, lease deadline (Redis ms), checkpoint, ended, parents of one shard."""
    return f"{shard_lease_prefix(uuid)}{shard_id}"


def shard_set(uuid: str) -> str:
    """Set: every shard id a mapping's replicas have discovered."""
    return f"{PREFIX}:shards:{uuid}"


def shard_replicas(uuid: str) -> str:
    """Zset: poller replica id -> deadline (Redis ms) of the replicas sharing a mapping's shards."""
    return f"{PREFIX}:shard-replicas:{uuid}"


def shard_clock(uuid: str) -> str:
    """A mapping's shard clock: `"<ms> <run_id>"` of its last balance (Redis's time and the server's
    run id). A stale one alone no longer means Redis was away (the replicas may have been): the
    balance grants an outage grace only if Redis also restarted (another run id) or the worker
    leases' clock (`CLOCK`) went stale too."""
    return f"{PREFIX}:shard-clock:{uuid}"
