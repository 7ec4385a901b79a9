"""Every Redis key Headwater writes, built in one place.

Function queues are rq queues (`rq:queue:headwater.{<function>}`), so rq's own tools can see them;
the rest is ours. Entries in processing lists and the schedule are `<queue name>\\t<job id>`, so
any process can put a job back where it came from without reading the job.

One layout serves a single Redis and a Redis Cluster. Every key of one function carries the hash tag
`{<function>}` (Lambda function names never hold braces), so its queue, jobs, wake list, schedule,
quarantine, worker leases, clock, processing lists, concurrency leases and reply keys share one
slot, and each of the queue's scripts touches one slot only. A job's hash `rq:job:<id>` cannot carry
the tag (rq accepts only letters, digits, `_` and `-` in a job id, and its tools fetch jobs by id), so
the id is made to hash to its function's slot instead: a random part and a 3-character suffix picked
for that slot (`job_id`). Every key of one event source
mapping carries `{<mapping uuid>}`. A few keys are global and never touched inside a script: rq's
queue registry (`RQ_QUEUES`, a plain SADD) and the configuration stored through the API.

Nothing else spells a key or a prefix, the Lua scripts included: they get fixed keys in KEYS and
prefixes in ARGV (`queue.SCRIPT_LAYOUT`, `shard_leases`), and tests/workers/test_script_keys.py keeps
it so. rq's tools and KEDA's list trigger read these very keys.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import uuid

PREFIX = "headwater"
QUEUE_PREFIX = f"{PREFIX}."
RQ_QUEUE_KEY_PREFIX = "rq:queue:"
RQ_JOB_KEY_PREFIX = "rq:job:"
RQ_QUEUES = "rq:queues"  # set: the key of every rq queue, where rq's tools (and `headwater status`) find queues
WAKE_PREFIX = f"{PREFIX}:wake:"  # + queue name: tokens that wake the workers serving it
PROCESSING_PREFIX = f"{PREFIX}:processing:"  # + {function}: + worker id: the entries the worker holds
ENTRY_SEPARATOR = "\t"


def tag(function_name: str) -> str:
    """The hash tag every key of a function shares: one Redis Cluster slot per function."""
    return f"{{{function_name}}}"


def queue_name(function_name: str) -> str:
    return f"{QUEUE_PREFIX}{tag(function_name)}"


def function_of_queue(name: str) -> str:
    return name.removeprefix(QUEUE_PREFIX).removeprefix("{").removesuffix("}")


def queue_key(function_name: str) -> str:
    """List: rq's queue of the function's job ids (KEDA's list trigger reads its length)."""
    return f"{RQ_QUEUE_KEY_PREFIX}{queue_name(function_name)}"


def job_id(function_name: str) -> str:
    """A new job id, valid for rq, whose hash `rq:job:<id>` lies in the function's slot: 32 random hex
    digits, `-`, and a suffix that steers the key's CRC16 to that slot (see `_slot_suffixes`)."""
    head = f"{uuid.uuid4().hex}-".encode()
    base = binascii.crc_hqx(RQ_JOB_KEY_PREFIX.encode() + head + bytes(_SUFFIX_LENGTH), 0)
    return (head + _slot_suffixes()[(base ^ slot(queue_key(function_name))) & _SLOT_MASK]).decode()


def slot(key: str) -> int:
    """The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key without one."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    hashed = key[start + 1 : end] if end > start + 1 else key
    return binascii.crc_hqx(hashed.encode(), 0) & _SLOT_MASK


_SLOT_MASK = 0x3FFF  # 16384 slots
_SUFFIX_LENGTH = 3
_ID_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@functools.cache
def _slot_suffixes() -> dict[int, bytes]:
    """Slot offset -> a suffix that adds it. CRC16 with a zero start is linear over equal-length
    inputs, so a job key's CRC is that of its random head (suffix zeroed) XOR that of the suffix
    alone (head zeroed): the suffix whose own CRC is `wanted XOR head's` lands the key in `wanted`.
    The 64^3 suffixes cover all 16384 offsets (checked by tests); built once per process (~0.2 s)."""
    zeros = bytes(len(RQ_JOB_KEY_PREFIX) + 33)  # where the prefix and `<32 hex>-` go
    table: dict[int, bytes] = {}
    for letters in itertools.product(_ID_ALPHABET, repeat=_SUFFIX_LENGTH):
        suffix = bytes(letters)
        table.setdefault(binascii.crc_hqx(zeros + suffix, 0) & _SLOT_MASK, suffix)
    return table


def job(job_id_: str) -> str:
    """Hash: rq's job, whose `data` field holds the invocation (see `job_codec`)."""
    return f"{RQ_JOB_KEY_PREFIX}{job_id_}"


def wake(queue: str) -> str:
    return f"{WAKE_PREFIX}{queue}"


def processing_prefix(function_name: str) -> str:
    """Prefix of the function's processing lists; RECOVER appends a dead worker's id."""
    return f"{PROCESSING_PREFIX}{tag(function_name)}:"


def processing(function_name: str, worker_id: str) -> str:
    """List: the entries of the function's jobs that the worker holds."""
    return f"{processing_prefix(function_name)}{worker_id}"


def scheduled(function_name: str) -> str:
    """Zset: the function's entries -> due time (retries, throttle backoff)."""
    return f"{PREFIX}:scheduled:{tag(function_name)}"


def workers(function_name: str) -> str:
    """Zset: worker id -> lease deadline (Redis's clock, ms) of the workers serving the function."""
    return f"{PREFIX}:workers:{tag(function_name)}"


def clock(function_name: str) -> str:
    """Redis's time (ms) when a lease of the function's workers was last renewed: a stale one means
    Redis (or every worker of the function) was away."""
    return f"{PREFIX}:clock:{tag(function_name)}"


def quarantine(function_name: str) -> str:
    """Hash: job id -> JSON {queue, reason, at} of the function's set-aside jobs; their hashes are kept."""
    return f"{PREFIX}:quarantine:{tag(function_name)}"


def concurrency(function_name: str) -> str:
    return f"{PREFIX}:concurrency:{tag(function_name)}"


def reply(function_name: str, request_id: str) -> str:
    """List: the result a caller waits for; in the function's slot, so COMPLETE writes it in its step."""
    return f"{PREFIX}:reply:{tag(function_name)}:{request_id}"


def mapping_state(uuid: str) -> str:
    """Hash: the State, StateTransitionReason, LastProcessingResult and LastModified of a mapping."""
    return f"{PREFIX}:mapping:{tag(uuid)}"


# -- configuration stored at run time through the API: see broker/mapping_store.py and ---------------
# -- broker/function_overrides.py (the only modules that touch these keys) ---------------------------
# They share one hash tag, so the transactions that change a record and bump its generation stay in one slot.
CONFIG_TAG = "{headwater-config}"
MAPPINGS = f"{PREFIX}:{CONFIG_TAG}:mappings"  # hash: UUID -> JSON record of a mapping created through the API
MAPPINGS_GENERATION = f"{PREFIX}:{CONFIG_TAG}:mappings:generation"  # counter: bumped by every change to MAPPINGS
FUNCTION_CONCURRENCY = f"{PREFIX}:{CONFIG_TAG}:function-concurrency"  # hash: function -> ReservedConcurrentExecutions
FUNCTION_EVENT_INVOKE_CONFIG = f"{PREFIX}:{CONFIG_TAG}:function-event-invoke-config"  # hash: function -> JSON
FUNCTION_OVERRIDES_GENERATION = f"{PREFIX}:{CONFIG_TAG}:function-overrides:generation"  # counter: every change


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
    return f"{SHARD_PREFIX}{tag(uuid)}:"


def shard_lease(uuid: str, shard_id: str) -> str:
    """Hash: owner, fencing token, lease deadline (Redis ms), checkpoint, ended, parents of one shard."""
    return f"{shard_lease_prefix(uuid)}{shard_id}"


def shard_set(uuid: str) -> str:
    """Set: every shard id a mapping's replicas have discovered."""
    return f"{PREFIX}:shards:{tag(uuid)}"


def shard_replicas(uuid: str) -> str:
    """Zset: poller replica id -> deadline (Redis ms) of the replicas sharing a mapping's shards."""
    return f"{PREFIX}:shard-replicas:{tag(uuid)}"


def shard_clock(uuid: str) -> str:
    """A mapping's shard clock: `"<ms> <run_id>"` of its last balance (Redis's time and the server's
    run id). A stale one alone no longer means Redis was away (the replicas may have been): the
    balance grants an outage grace only if Redis also restarted (another run id) or the clock of the
    mapping's function's worker leases (`clock`, read by the caller and passed in) went stale too."""
    return f"{PREFIX}:shard-clock:{tag(uuid)}"


# -- the layout before hash tags (single Redis only): read once by `broker.layout_migration` ----------
class PreviousLayout:
    """Keys as releases before the Redis Cluster layout wrote them, so an upgrade can carry their
    data over (`broker.layout_migration`). Nothing else reads or writes them."""

    SCHEDULED = f"{PREFIX}:scheduled"
    WORKERS = f"{PREFIX}:workers"
    WORKER_FUNCTIONS = f"{PREFIX}:worker-functions"
    QUARANTINE = f"{PREFIX}:quarantine"
    PROCESSING_PREFIX = f"{PREFIX}:processing:"
    SHARDS_PREFIX = f"{PREFIX}:shards:"
    CONFIG = (  # (then, now)
        (f"{PREFIX}:mappings", MAPPINGS),
        (f"{PREFIX}:mappings:generation", MAPPINGS_GENERATION),
        (f"{PREFIX}:function-concurrency", FUNCTION_CONCURRENCY),
        (f"{PREFIX}:function-event-invoke-config", FUNCTION_EVENT_INVOKE_CONFIG),
        (f"{PREFIX}:function-overrides:generation", FUNCTION_OVERRIDES_GENERATION),
    )

    @staticmethod
    def queue_name(function_name: str) -> str:
        return f"{QUEUE_PREFIX}{function_name}"

    @staticmethod
    def mapping_keys(uuid: str) -> dict[str, str]:
        """A mapping's keys then and now (its shard leases apart: they are named by the shard set)."""
        return {
            f"{PREFIX}:shards:{uuid}": shard_set(uuid),
            f"{PREFIX}:shard-replicas:{uuid}": shard_replicas(uuid),
            f"{PREFIX}:shard-clock:{uuid}": shard_clock(uuid),
            f"{PREFIX}:mapping:{uuid}": mapping_state(uuid),
        }

    @staticmethod
    def shard_lease(uuid: str, shard_id: str) -> str:
        return f"{SHARD_PREFIX}{uuid}:{shard_id}"
