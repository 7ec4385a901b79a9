"""Lambda's stream/Kafka failure semantics, on an in-memory log source and a scripted function."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broker import stream_retry
from broker.destinations.base import Message
from broker.errors import DestinationError
from broker.invocation import Result, Status
from broker.mapping import EventSourceMapping
from broker.sources.base import Batch, Record
from broker.stream_retry import deliver_in_place
from tests.memory_source import MemoryLog, context


def memory_log(mapping: EventSourceMapping) -> MemoryLog:
    return MemoryLog(mapping, source_context=context(3, region="eu-west-1", account_id="111122223333"))


def batch_of(*values: str, age_seconds: float = 0.0) -> Batch:
    arrived = time.time() - age_seconds
    records = tuple(
        Record(
            item_id=f"log-0@{offset}",
            lane="log-0",
            event={"offset": offset, "value": value},
            size_bytes=10,
            arrived_at=arrived,
            filter_view={},
        )
        for offset, value in enumerate(values)
    )
    return Batch(records, lane="log-0")


def kafka_mapping(**fields: Any) -> EventSourceMapping:
    return EventSourceMapping.model_validate(
        {
            "FunctionName": "ingest",
            "Topics": ["log"],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["localhost:9092"]}},
            **fields,
        }
    )


class Function:
    """Answers each invocation by a rule on the batch's values; remembers every batch it ran."""

    def __init__(self, answer: Callable[[list[str], int], Status | dict[str, Any] | None]) -> None:
        self.answer = answer
        self.batches: list[list[str]] = []

    async def __call__(self, batch: Batch) -> Result:
        values = [record.event["value"] for record in batch.records]
        decided = self.answer(values, len(self.batches))
        if decided is not Status.THROTTLED:
            self.batches.append(values)
        if isinstance(decided, Status):
            return Result(f"req-{len(self.batches)}", decided, json.dumps({"errorMessage": "boom"}))
        return Result(f"req-{len(self.batches)}", Status.SUCCESS, json.dumps(decided))


class Destination:
    """Takes on-failure messages as the poller's `send_on_failure` does; keeps their JSON bodies, decoded."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.records: list[dict[str, Any]] = []
        self.keys: list[bytes | None] = []

    async def __call__(self, message: Message) -> None:
        if self.failures:
            self.failures -= 1
            raise DestinationError("target unavailable")
        self.records.append(json.loads(message.body))
        self.keys.append(message.key)


def fails_on(poison: str) -> Callable[[list[str], int], Status | None]:
    return lambda values, _: Status.FUNCTION_ERROR if poison in values else None


def stage(mapping: EventSourceMapping, name: str) -> float:
    value = REGISTRY.get_sample_value(
        "headwater_mapping_events_total", {"mapping": mapping.uuid, "source_type": "kafka", "stage": name}
    )
    return value or 0.0


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RETRY_DELAY_SECONDS", "THROTTLE_DELAY_SECONDS", "DESTINATION_DELAY_SECONDS"):
        monkeypatch.setattr(stream_retry, name, (0.0, 0.0))


async def test_retries_exhausted_sends_lambdas_failure_record() -> None:
    mapping = kafka_mapping(MaximumRetryAttempts=2, DestinationConfig={"OnFailure": {"Destination": "kafka://failed"}})
    function, destination = Function(fails_on("poison")), Destination()
    delivered_before = stage(mapping, "on_failure_delivered")  # other tests count under the same mapping
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a", "poison"), function, destination)

    assert function.batches == [["a", "poison"]] * 3
    [record] = destination.records
    assert list(record) == ["requestContext", "responseContext", "version", "timestamp", "MemoryBatchInfo"]
    assert record["requestContext"] == {
        "requestId": "req-3",
        "functionArn": "arn:aws:lambda:eu-west-1:111122223333:function:ingest",
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 3,
    }
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert record["version"] == "1.0"
    assert record["timestamp"].endswith("Z")
    assert record["MemoryBatchInfo"] == {"first": "log-0@0", "last": "log-0@1", "batchSize": 2}
    assert stage(mapping, "on_failure_delivered") - delivered_before == 2


async def test_infinite_retries_are_capped_at_ten_with_a_destination() -> None:
    mapping = kafka_mapping(DestinationConfig={"OnFailure": {"Destination": "kafka://failed"}})
    function, destination = Function(fails_on("poison")), Destination()
    await deliver_in_place(memory_log(mapping), mapping, batch_of("poison"), function, destination)
    assert len(function.batches) == 11
    assert destination.records[0]["requestContext"]["approximateInvokeCount"] == 11


async def test_infinite_retries_without_destination_retry_until_success() -> None:
    mapping = kafka_mapping()
    function = Function(lambda values, calls: Status.FUNCTION_ERROR if calls < 14 else None)
    destination = Destination()
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a"), function, destination)
    assert len(function.batches) == 15
    assert destination.records == []


async def test_throttles_spend_no_retries() -> None:
    mapping = kafka_mapping(MaximumRetryAttempts=0, DestinationConfig={"OnFailure": {"Destination": "kafka://f"}})
    throttles = [False, True, True, True]  # popped from the end: three throttles, then an answer
    function = Function(lambda values, calls: Status.THROTTLED if throttles.pop() else None)
    destination = Destination()
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a"), function, destination)
    assert function.batches == [["a"]]
    assert destination.records == []


async def test_bisect_splits_without_spending_retries() -> None:
    mapping = kafka_mapping(
        MaximumRetryAttempts=0,
        BisectBatchOnFunctionError=True,
        DestinationConfig={"OnFailure": {"Destination": "kafka://failed"}},
    )
    function, destination = Function(fails_on("poison")), Destination()
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a", "b", "poison", "d"), function, destination)
    assert function.batches == [["a", "b", "poison", "d"], ["a", "b"], ["poison", "d"], ["poison"], ["d"]]
    [record] = destination.records
    assert record["MemoryBatchInfo"] == {"first": "log-0@2", "last": "log-0@2", "batchSize": 1}


async def test_partial_failure_retries_from_the_lowest_failed_record() -> None:
    mapping = kafka_mapping(FunctionResponseTypes=["ReportBatchItemFailures"])
    seen: set[int] = set()

    def answer(values: list[str], calls: int) -> dict[str, Any]:
        fresh = [v for v in ("c", "b") if v in values and calls not in seen]
        seen.add(calls)
        failures = [{"itemIdentifier": f"log-0@{ord(v) - ord('a')}"} for v in fresh] if calls == 0 else []
        return {"batchItemFailures": failures}

    function = Function(answer)
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a", "b", "c", "d"), function, Destination())
    assert function.batches == [["a", "b", "c", "d"], ["b", "c", "d"]]


async def test_malformed_partial_answer_fails_the_whole_batch() -> None:
    mapping = kafka_mapping(
        FunctionResponseTypes=["ReportBatchItemFailures"],
        MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": "kafka://f"}},
    )
    function = Function(lambda values, calls: {"batchItemFailures": [{"itemIdentifier": "log-0@99"}]})
    destination = Destination()
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a", "b"), function, destination)
    assert function.batches == [["a", "b"]] * 2
    assert "functionError" not in destination.records[0]["responseContext"]  # it returned; it did not raise


async def test_records_too_old_are_not_invoked() -> None:
    mapping = kafka_mapping(MaximumRecordAgeInSeconds=60, DestinationConfig={"OnFailure": {"Destination": "kafka://f"}})
    function, destination = Function(fails_on("never")), Destination()
    await deliver_in_place(memory_log(mapping), mapping, batch_of("a", "b", age_seconds=120), function, destination)
    assert function.batches == []
    [record] = destination.records
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record


async def test_destination_failures_are_retried_never_lost() -> None:
    mapping = kafka_mapping(MaximumRetryAttempts=0, DestinationConfig={"OnFailure": {"Destination": "kafka://f"}})
    labels = {"function": "ingest", "destination": "on_failure", "target_type": "kafka"}
    before = REGISTRY.get_sample_value("headwater_destination_delivery_failures_total", labels) or 0.0
    destination = Destination(failures=3)
    await deliver_in_place(memory_log(mapping), mapping, batch_of("poison"), Function(fails_on("poison")), destination)
    assert len(destination.records) == 1
    assert REGISTRY.get_sample_value("headwater_destination_delivery_failures_total", labels) == before + 3


async def test_without_destination_records_are_dropped_and_counted() -> None:
    mapping = kafka_mapping(MaximumRetryAttempts=1)
    before = stage(mapping, "dropped")
    await deliver_in_place(
        memory_log(mapping), mapping, batch_of("poison", "x"), Function(fails_on("poison")), Destination()
    )
    assert stage(mapping, "dropped") == before + 2


async def test_a_lost_lane_is_abandoned() -> None:
    mapping = kafka_mapping(DestinationConfig={"OnFailure": {"Destination": "kafka://f"}})
    source, destination = memory_log(mapping), Destination()

    def answer(values: list[str], calls: int) -> Status:
        source.owned = calls < 2  # the partition is revoked during the third run
        return Status.FUNCTION_ERROR

    function = Function(answer)
    await deliver_in_place(source, mapping, batch_of("a"), function, destination)
    assert len(function.batches) == 3
    assert destination.records == []


def final_batch_of(first: str, last: str) -> Batch:
    """A closing invocation with no records of its own, concluding the records `first`..`last`."""
    window = batch_of(first, last)
    return Batch((), lane="log-0", final=True, concludes=window.records)


async def test_a_final_batch_is_retried_and_fails_as_a_whole() -> None:
    mapping = kafka_mapping(MaximumRetryAttempts=2, DestinationConfig={"OnFailure": {"Destination": "kafka://f"}})
    function, destination = Function(lambda values, calls: Status.FUNCTION_ERROR), Destination()
    before = stage(mapping, "on_failure_delivered")
    await deliver_in_place(memory_log(mapping), mapping, final_batch_of("a", "b"), function, destination)
    assert function.batches == [[]] * 3, "run, then retried twice: a failure with no record to name fails it all"
    [record] = destination.records
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["MemoryBatchInfo"] == {"first": "log-0@0", "last": "log-0@1", "batchSize": 0}
    assert stage(mapping, "on_failure_delivered") == before, "no record of its own was given up"


async def test_a_final_batch_that_succeeds_is_done() -> None:
    mapping = kafka_mapping(MaximumRetryAttempts=2, DestinationConfig={"OnFailure": {"Destination": "kafka://f"}})
    function, destination = Function(lambda values, calls: Status.FUNCTION_ERROR if calls == 0 else None), Destination()
    await deliver_in_place(memory_log(mapping), mapping, final_batch_of("a", "b"), function, destination)
    assert function.batches == [[], []]
    assert destination.records == []
