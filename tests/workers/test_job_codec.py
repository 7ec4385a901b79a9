"""The stored job form: what this release writes, and what it must still read after an upgrade."""

from __future__ import annotations

import dataclasses
import json
import zlib

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from broker import job_codec, keys
from broker.invocation import Condition, Invocation, InvocationType, Outcome, Result, Status
from broker.queue import InvocationQueue


def store_as_the_previous_release_did(redis: Redis, invocation: Invocation) -> str:
    """A real rq job with all of rq's metadata, zlib level 6: what jobs queued before the upgrade look like
    (under today's key layout: an id that carries the function's hash tag)."""
    queue_name = keys.queue_name(invocation.function_name)
    job = Queue(queue_name, connection=redis, serializer=JSONSerializer).create_job(
        "workers.invoke.run",
        args=[invocation.to_wire()],
        result_ttl=0,
        timeout=-1,
        job_id=keys.job_id(invocation.function_name),
    )
    job.origin = queue_name
    fields = {
        name: value if isinstance(value, bytes | int | float) else str(value) for name, value in job.to_dict().items()
    }
    redis.hset(keys.job(job.id), mapping=fields)
    redis.rpush(keys.queue_key(invocation.function_name), job.id)
    return str(job.id)


def _stored(value: object) -> bytes | int | float | str:
    return value if isinstance(value, bytes | int | float) else str(value)


def test_a_job_queued_by_the_previous_release_runs_and_leaves_nothing_behind(redis: Redis) -> None:
    queue = InvocationQueue(redis)
    sent = Invocation("f", '{"before": "upgrade"}', InvocationType.EVENT, trigger="async", invoke_count=1)
    job_id = store_as_the_previous_release_did(redis, sent)
    queue.heartbeat("a", ["f"])

    [claim] = queue.claim("a", ["f"], 4).claims

    assert claim.job_id == job_id
    assert claim.invocation == sent
    assert queue.complete("a", claim).applied
    assert not redis.exists(keys.job(job_id))


def test_every_invocation_field_survives_the_round_trip() -> None:
    result = Result("r", Status.FUNCTION_ERROR, '{"errorType": "E"}', "E", 0.5)
    plain = Invocation("f", '{"a": "\\u00e9t\\u00e9"}', InvocationType.REQUEST_RESPONSE, "sync", reply_to="k")
    decided = plain.replace(
        last_result=result,
        outcome=Outcome(Condition.RETRIES_EXHAUSTED, 3, result, 12.5),
        delivered=("arn:one",),
        delivery_attempts=2,
        client_context="e30=",
        tail_log=True,
    )
    for invocation in (plain, decided):
        assert job_codec.decode(job_codec.encode(invocation)) == invocation
        # the same document the model's own wire form gives: the previous release reads it
        assert json.loads(zlib.decompress(job_codec.encode(invocation)))[2][0] == json.loads(
            json.dumps(invocation.to_wire())
        )


def test_the_fast_wire_form_names_every_field_of_the_model() -> None:
    """A field added to Invocation must be added to the codec's flat list too (or it is silently lost)."""
    flat = {*job_codec._FLAT_FIELDS, "last_result", "outcome", "delivered", "delivery_attempts"}
    assert flat == {field.name for field in dataclasses.fields(Invocation)}


def test_small_jobs_are_stored_uncompressed_and_large_ones_compressed() -> None:
    small = job_codec.encode(Invocation("f", "{}", InvocationType.EVENT, "async"))
    large_payload = json.dumps({"records": ["x" * 100] * 1000})
    large = job_codec.encode(Invocation("f", large_payload, InvocationType.EVENT, "async"))
    assert small[:2] == b"\x78\x01"  # zlib level 0: a stored block
    assert len(large) < len(large_payload) // 10
    assert job_codec.decode(large).payload == large_payload


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00not zlib", "compressed form"),
        (zlib.compress(b"{not json"), "JSON job form"),
        (zlib.compress(b'["workers.invoke.run", null, ["text"], {}]'), "not an invocation object"),
        (zlib.compress(b'["workers.invoke.run", null, [{"payload": "{}"}], {}]'), "this release can run"),
    ],
)
def test_undecodable_data_names_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(job_codec.UndecodableJobError, match=reason):
        job_codec.decode(data)
