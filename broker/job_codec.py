"""The stored form of one invocation: what a job hash's `data` field holds, written and read only here.

A job is the hash `rq:job:<id>` with one field written by the producer, `data`: zlib around the JSON
array `["workers.invoke.run", null, [<invocation>], {}]` (rq's JSON job form; the workers never run
it through rq). The protocol adds `headwater_start_token` and `headwater_starts` when a worker
begins the job. Nothing else is stored: no rq metadata (timestamps, status, description), which
cost a quarter of a millisecond per job to build and a dozen Redis writes to store.

Why this form, and not a new one: it is exactly what the previous release wrote and read, so a
rolling upgrade runs both releases on one queue in either direction. Jobs stored by the previous
release (which also wrote rq's metadata fields beside `data`) run unchanged, and this release's
jobs run on a worker of the previous release. Small jobs are stored uncompressed (zlib level 0, a
stored block: a copy and a checksum); only jobs over `COMPRESS_ABOVE_BYTES` are compressed, at
level 1, where the Redis memory saved is worth the CPU.

Anything `decode` cannot read raises `UndecodableJobError` with the reason, and the job goes to
quarantine instead of being run.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from broker.invocation import Invocation

JOB_HANDLER = "workers.invoke.run"  # the callable recorded in each job, for rq's tools; never imported
COMPRESS_ABOVE_BYTES = 16_384
_FLAT_FIELDS = (
    "function_name",
    "payload",
    "invocation_type",
    "trigger",
    "request_id",
    "accepted_at",
    "invoke_count",
    "throttle_count",
    "reply_to",
    "client_context",
    "tail_log",
)


class UndecodableJobError(ValueError):
    """A claimed job whose data is not an invocation this release can run; it goes to quarantine."""


def encode(invocation: Invocation) -> bytes:
    """The job's `data` field for `invocation`."""
    document = orjson.dumps([JOB_HANDLER, None, [_wire(invocation)], {}])
    return zlib.compress(document, 1 if len(document) > COMPRESS_ABOVE_BYTES else 0)


def decode(data: bytes | str) -> Invocation:
    """Read a job's `data`. Fields a newer release added are ignored; anything else that is not an
    invocation raises `UndecodableJobError` with the reason."""
    try:
        raw = zlib.decompress(data if isinstance(data, bytes) else data.encode("latin-1"))
    except zlib.error as error:
        raise UndecodableJobError(f"job data is not rq's compressed form ({error})") from None
    try:
        wire = orjson.loads(raw)[2][0]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError) as error:
        raise UndecodableJobError(f"job data is not rq's JSON job form ({type(error).__name__}: {error})") from None
    if not isinstance(wire, dict):
        raise UndecodableJobError("job argument is not an invocation object")
    try:
        return Invocation.from_wire(wire)
    except (ValueError, KeyError, TypeError) as error:
        raise UndecodableJobError(
            f"job is not an invocation this release can run ({type(error).__name__}: {error})"
        ) from None


def _wire(invocation: Invocation) -> dict[str, Any]:
    """`Invocation.to_wire()`'s document, built directly in the common case (no result or outcome
    attached yet), which spares `dataclasses.asdict`'s deep copy on every enqueue."""
    if invocation.last_result is not None or invocation.outcome is not None:
        return invocation.to_wire()
    wire = {name: getattr(invocation, name) for name in _FLAT_FIELDS}
    wire["last_result"] = None
    wire["outcome"] = None
    wire["delivered"] = list(invocation.delivered)
    wire["delivery_attempts"] = invocation.delivery_attempts
    return wire
