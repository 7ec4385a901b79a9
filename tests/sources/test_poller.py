"""The poller's own decisions, fast: a queue held in a list behind the real `Source` interface and a
sender that answers from a script stand in for SQS and the workers. Poison input runs on the real
path instead: the real `Sender`, the session's Redis and worker pool, and the recorder handler."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from structlog.testing import capture_logs

from broker.config import Function, HeadwaterOptions
from broker.destinations.base import Message
from broker.errors import BatchLostError
from broker.invocation import Result, Status
from broker.mapping import EventSourceMapping
from broker.mapping_state import ProcessingResult
from broker.poller import Poller
from broker.sender import Sender
from broker.sources.base import Batch, Record, Source
from tests.memory_source import MemorySource, body_records, context
from tests.waiting import eventually

ARN = "arn:aws:sqs:us-east-1:123456789012:memory"


def list_source(mapping: EventSourceMapping, bodies: list[dict[str, Any]], lane: str | None = None) -> MemorySource:
    """A queue in a list holding `bodies` as records `id0`, `id1`..."""
    return MemorySource(mapping, body_records(bodies, lane))


class ScriptedSender:
    """Answers invocations from `answer(event)`; counts them and the most that ran at once."""

    def __init__(self, answer: Callable[[dict[str, Any]], Result], seconds: float = 0.0) -> None:
        self.answer = answer
        self.seconds = seconds
        self.events: list[dict[str, Any]] = []
        self.running = self.most_at_once = 0

    async def invoke(
        self, function_name: str, payload: str, trigger: str, *, give_up_at: float | None = None
    ) -> Result:
        event = json.loads(payload)
        self.events.append(event)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.seconds)
            return self.answer(event)
        finally:
            self.running -= 1


def ok(payload: Any = None) -> Result:
    return Result("r", Status.SUCCESS, json.dumps(payload))


def throttled() -> Result:
    return Result("r", Status.THROTTLED, json.dumps({"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}))


async def run_until(poller: Poller, done: Callable[[], bool], within: float = 5.0) -> None:
    task = asyncio.create_task(poller.run())
    await eventually(done, within, lambda: "condition not met")
    poller.stop()
    await asyncio.wait_for(task, 5)


def poller_for(
    source: Source,
    sender: ScriptedSender | Sender,
    function: Function | None = None,
    *,
    reports: list[ProcessingResult] | None = None,
    sent: list[tuple[str, Message]] | None = None,
) -> Poller:
    async def report(result: ProcessingResult) -> None:
        if reports is not None:
            reports.append(result)

    async def send(target: str, message: Message) -> None:
        if sent is not None:
            sent.append((target, message))

    options = HeadwaterOptions(throttle_backoff_initial_seconds=0.05, throttle_backoff_max_seconds=0.2)
    return Poller(
        source.mapping, function or Function(function_name="f", handler="m.h", timeout=1), source,
        sender=sender, send=send, options=options, report=report,  # type: ignore[arg-type]
    )  # fmt: skip


def mapping(**fields: Any) -> EventSourceMapping:
    return EventSourceMapping.model_validate({"FunctionName": "f", "EventSourceArn": ARN, **fields})


async def test_a_throttled_batch_is_retried_in_place_after_a_pause() -> None:
    answers = iter([throttled(), throttled(), ok()])
    source = list_source(mapping(), [{"n": 1}, {"n": 2}])
    sender = ScriptedSender(lambda event: next(answers))
    started = time.monotonic()
    await run_until(poller_for(source, sender), lambda: bool(source.settled))
    assert source.settled == [(["id0", "id1"], frozenset())]
    assert len(sender.events) == 3
    assert time.monotonic() - started >= 0.05 + 0.1, "backed off 0.05 s, then 0.1 s"


async def test_a_batch_throttled_for_a_whole_function_timeout_goes_back_to_its_queue() -> None:
    source = list_source(mapping(), [{"n": 1}])
    await run_until(poller_for(source, ScriptedSender(lambda event: throttled())), lambda: bool(source.settled))
    assert source.settled == [(["id0"], frozenset({"id0"}))]


async def test_in_an_ordered_lane_nothing_after_a_failure_is_acknowledged() -> None:
    source = list_source(mapping(FunctionResponseTypes=["ReportBatchItemFailures"]), [{}, {}, {}, {}], lane="g")
    sender = ScriptedSender(lambda event: ok({"batchItemFailures": [{"itemIdentifier": "id1"}]}))
    await run_until(poller_for(source, sender), lambda: bool(source.settled))
    assert source.settled == [(["id0", "id1", "id2", "id3"], frozenset({"id1", "id2", "id3"}))]


async def test_filtered_records_are_not_invoked_but_settled_as_done() -> None:
    pattern = json.dumps({"body": {"keep": [True]}})
    source = list_source(mapping(FilterCriteria={"Filters": [{"Pattern": pattern}]}), [{"keep": True}, {"keep": False}])
    sender = ScriptedSender(lambda event: ok())
    await run_until(poller_for(source, sender), lambda: bool(source.settled))
    assert [json.loads(r["body"]) for r in sender.events[0]["Records"]] == [{"keep": True}]
    assert source.settled == [(["id0", "id1"], frozenset())]


async def test_reserved_concurrency_caps_batches_in_flight() -> None:
    source = list_source(mapping(BatchSize=1), [{"n": n} for n in range(12)])
    sender = ScriptedSender(lambda event: ok(), seconds=0.02)
    alone = Function(function_name="f", handler="m.h", timeout=1, reserved_concurrent_executions=1)
    await run_until(poller_for(source, sender, alone), lambda: len(source.settled) == 12)
    assert sender.most_at_once == 1


async def test_full_batches_scale_out() -> None:
    source = list_source(mapping(BatchSize=1), [{"n": n} for n in range(40)])
    sender = ScriptedSender(lambda event: ok(), seconds=0.05)
    await run_until(poller_for(source, sender), lambda: len(source.settled) == 40)
    assert sender.most_at_once >= 5, "Lambda starts five concurrent batches when messages arrive"


async def test_a_batch_whose_invocation_will_never_answer_is_handed_back() -> None:
    def vanish(event: dict[str, Any]) -> Result:
        raise BatchLostError("job vanished without a reply")

    source = list_source(mapping(), [{"n": 1}])
    await run_until(poller_for(source, ScriptedSender(vanish)), lambda: bool(source.settled))
    assert source.settled == [(["id0"], frozenset({"id0"}))]  # released: nothing acknowledged


# -- poison input, on the real path ---------------------------------------------------------------
class ShapingSource(MemorySource):
    """Messages shaped into SQS-like records when read, one batch per `reads` entry, then nothing; a
    body with `"poison": true` is shaped with a value JSON cannot hold, as a buggy shape would."""

    def __init__(self, mapping: EventSourceMapping, reads: list[list[dict[str, Any]]], *, log: bool = False) -> None:
        super().__init__(mapping, source_context=context(2))
        self.retries_in_place = log  # type: ignore[misc]  # the same source, as a queue or as a log
        self.reads = list(reads)

    def take(self) -> Batch | None:
        if not self.reads:
            return None
        return Batch(tuple(self.shape(body) for body in self.reads.pop(0)), "lane-0" if self.retries_in_place else None)

    def shape(self, body: dict[str, Any]) -> Record:
        event: dict[str, Any] = {"messageId": body["id"], "body": json.dumps(body)}
        if body.get("poison"):
            event["attributes"] = {"sentAt": datetime.now(UTC)}  # not JSON: the encode step refuses it
        return Record(body["id"], None, event, 100, time.time(), {})

    def desired_concurrency(self, backlog_hint: int) -> int:
        return 1

    def failure_record_info(self, batch: Batch) -> dict[str, Any]:
        return {"MemoryBatchInfo": {"ids": [record.item_id for record in batch.records]}}


def unreadable_count(mapping: EventSourceMapping) -> float:
    labels = {"mapping": mapping.uuid, "source_type": mapping.source_kind, "stage": "unreadable"}
    return REGISTRY.get_sample_value("headwater_mapping_events_total", labels) or 0.0


def seen(redis_url: str, namespace: str) -> list[list[str]]:
    redis = Redis.from_url(redis_url)
    try:
        return [json.loads(entry)["ids"] for entry in redis.lrange(f"seen:{namespace}", 0, -1)]
    finally:
        redis.close()


RECORDER = Function(function_name="recorder", handler="tests.handlers.sources.handle", timeout=2)


@pytest.mark.usefixtures("worker_pool")
async def test_a_record_whose_event_is_not_json_is_set_aside_and_the_rest_is_invoked(redis_url: str) -> None:
    ns = f"poison-{uuid.uuid4().hex[:8]}"
    first: list[dict[str, Any]] = [
        {"ns": ns, "id": "m1"},
        {"ns": ns, "id": "m2", "poison": True},
        {"ns": ns, "id": "m3"},
    ]
    source = ShapingSource(mapping(), [first, first[1:2], [{"ns": ns, "id": "m4"}]])  # m2 comes back, once
    sender, reports = Sender(redis_url), list[ProcessingResult]()
    before = unreadable_count(source.mapping)
    poller = poller_for(source, sender, RECORDER, reports=reports)
    try:
        with capture_logs() as logs:
            await run_until(poller, lambda: len(source.settled) == 3 and source.read_count > 5, within=20)
    finally:
        await sender.close()

    assert seen(redis_url, ns) == [["m1", "m3"], ["m4"]], "the rest of the batch ran, and the batches after it"
    assert source.settled == [
        (["m1", "m2", "m3"], frozenset({"m2"})),  # back to the queue: its redrive policy decides
        (["m2"], frozenset({"m2"})),
        (["m4"], frozenset()),
    ]
    assert unreadable_count(source.mapping) == before + 2
    assert ProcessingResult.UNREADABLE_RECORD in reports
    lines = [line for line in logs if line["event"] == "record cannot be invoked; set aside as unreadable"]
    assert [(line["mapping"], line["record"]) for line in lines] == [(source.mapping.uuid, "m2")] * 2
    assert "not JSON-serialisable" in lines[0]["error"]


@pytest.mark.usefixtures("worker_pool")
async def test_a_log_source_sends_an_unreadable_record_to_its_on_failure_destination(redis_url: str) -> None:
    ns = f"poison-{uuid.uuid4().hex[:8]}"
    bodies: list[dict[str, Any]] = [
        {"ns": ns, "id": "m1"},
        {"ns": ns, "id": "m2", "poison": True},
        {"ns": ns, "id": "m3"},
    ]
    log_mapping = EventSourceMapping.model_validate(
        {
            "FunctionName": "recorder",
            "Topics": ["log"],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["localhost:9092"]}},
            "DestinationConfig": {"OnFailure": {"Destination": "kafka://failed"}},
        }
    )
    source = ShapingSource(log_mapping, [bodies], log=True)
    sender, sent = Sender(redis_url), list[tuple[str, Message]]()
    poller = poller_for(source, sender, RECORDER, sent=sent)
    try:
        await run_until(poller, lambda: bool(source.settled) and source.read_count > 3, within=20)
    finally:
        await sender.close()

    assert seen(redis_url, ns) == [["m1", "m3"]]
    assert source.settled == [(["m1", "m2", "m3"], frozenset())], "settled whole: the lane moves on"
    [(target, message)] = sent
    record = json.loads(message.body)
    assert target == "kafka://failed"
    assert record["requestContext"]["condition"] == "RecordUnreadable"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record
    assert record["MemoryBatchInfo"] == {"ids": ["m2"]}
