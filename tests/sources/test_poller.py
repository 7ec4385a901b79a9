"""The poller's own decisions, fast: a queue held in a list behind the real `Source` interface and a
sender that answers from a script stand in for SQS and the workers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from broker.config import Function, Settings
from broker.errors import BatchLostError
from broker.mapping import EventSourceMapping
from broker.mapping_state import ProcessingResult
from broker.model import Result, Status
from broker.poller import Poller
from broker.sources.base import Batch, Record, Source, SourceContext

ARN = "arn:aws:sqs:us-east-1:123456789012:memory"


class ListSource(Source):
    """A queue in a list: reads take up to BatchSize records (one lane at a time), settles are kept."""

    def __init__(self, mapping: EventSourceMapping, bodies: list[dict[str, Any]], lane: str | None = None) -> None:
        super().__init__(mapping, SourceContext(aws_session=None, region="us-east-1", function_timeout_seconds=1))
        self.pending = [
            Record(f"id{i}", lane, {"body": json.dumps(body)}, 10, time.time(), {"body": body})
            for i, body in enumerate(bodies)
        ]
        self.settled: list[tuple[list[str], frozenset[str]]] = []

    async def read_batch(self) -> Batch | None:
        if not self.pending:
            await asyncio.sleep(0.01)
            return None
        taken, self.pending = self.pending[: self.mapping.batch_size], self.pending[self.mapping.batch_size :]
        return Batch(tuple(taken), taken[0].lane)

    def event(self, batch: Batch) -> dict[str, Any]:
        return {"Records": [record.event for record in batch.records]}

    def desired_concurrency(self, backlog_hint: int) -> int:
        return backlog_hint  # as SQS does, without a ceiling

    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        self.settled.append(([record.item_id for record in batch.records], failed))


class ScriptedSender:
    """Answers invocations from `answer(event)`; counts them and the most that ran at once."""

    def __init__(self, answer: Callable[[dict[str, Any]], Result], seconds: float = 0.0) -> None:
        self.answer = answer
        self.seconds = seconds
        self.events: list[dict[str, Any]] = []
        self.running = self.most_at_once = 0

    async def invoke(
        self, function_name: str, event: dict[str, Any], trigger: str, *, give_up_at: float | None = None
    ) -> Result:
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
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)
    poller.stop()
    await asyncio.wait_for(task, 5)


def poller_for(source: ListSource, sender: ScriptedSender, function: Function | None = None) -> Poller:
    async def report(result: ProcessingResult) -> None:
        return None

    async def send(target: str, message: object) -> None:
        return None

    settings = Settings(throttle_backoff_initial_seconds=0.05, throttle_backoff_max_seconds=0.2)
    return Poller(
        source.mapping, function or Function(function_name="f", handler="m.h", timeout=1), source,
        sender=sender, send=send, settings=settings, report=report,  # type: ignore[arg-type]
    )  # fmt: skip


def mapping(**fields: Any) -> EventSourceMapping:
    return EventSourceMapping.model_validate({"FunctionName": "f", "EventSourceArn": ARN, **fields})


async def test_a_throttled_batch_is_retried_in_place_after_a_pause() -> None:
    answers = iter([throttled(), throttled(), ok()])
    source = ListSource(mapping(), [{"n": 1}, {"n": 2}])
    sender = ScriptedSender(lambda event: next(answers))
    started = time.monotonic()
    await run_until(poller_for(source, sender), lambda: bool(source.settled))
    assert source.settled == [(["id0", "id1"], frozenset())]
    assert len(sender.events) == 3
    assert time.monotonic() - started >= 0.05 + 0.1, "backed off 0.05 s, then 0.1 s"


async def test_a_batch_throttled_for_a_whole_function_timeout_goes_back_to_its_queue() -> None:
    source = ListSource(mapping(), [{"n": 1}])
    await run_until(poller_for(source, ScriptedSender(lambda event: throttled())), lambda: bool(source.settled))
    assert source.settled == [(["id0"], frozenset({"id0"}))]


async def test_in_an_ordered_lane_nothing_after_a_failure_is_acknowledged() -> None:
    source = ListSource(mapping(FunctionResponseTypes=["ReportBatchItemFailures"]), [{}, {}, {}, {}], lane="g")
    sender = ScriptedSender(lambda event: ok({"batchItemFailures": [{"itemIdentifier": "id1"}]}))
    await run_until(poller_for(source, sender), lambda: bool(source.settled))
    assert source.settled == [(["id0", "id1", "id2", "id3"], frozenset({"id1", "id2", "id3"}))]


async def test_filtered_records_are_not_invoked_but_settled_as_done() -> None:
    pattern = json.dumps({"body": {"keep": [True]}})
    source = ListSource(mapping(FilterCriteria={"Filters": [{"Pattern": pattern}]}), [{"keep": True}, {"keep": False}])
    sender = ScriptedSender(lambda event: ok())
    await run_until(poller_for(source, sender), lambda: bool(source.settled))
    assert [json.loads(r["body"]) for r in sender.events[0]["Records"]] == [{"keep": True}]
    assert source.settled == [(["id0", "id1"], frozenset())]


async def test_reserved_concurrency_caps_batches_in_flight() -> None:
    source = ListSource(mapping(BatchSize=1), [{"n": n} for n in range(12)])
    sender = ScriptedSender(lambda event: ok(), seconds=0.02)
    alone = Function(function_name="f", handler="m.h", timeout=1, reserved_concurrent_executions=1)
    await run_until(poller_for(source, sender, alone), lambda: len(source.settled) == 12)
    assert sender.most_at_once == 1


async def test_full_batches_scale_out() -> None:
    source = ListSource(mapping(BatchSize=1), [{"n": n} for n in range(40)])
    sender = ScriptedSender(lambda event: ok(), seconds=0.05)
    await run_until(poller_for(source, sender), lambda: len(source.settled) == 40)
    assert sender.most_at_once >= 5, "Lambda starts five concurrent batches when messages arrive"


async def test_a_batch_whose_invocation_will_never_answer_is_handed_back() -> None:
    def vanish(event: dict[str, Any]) -> Result:
        raise BatchLostError("job vanished without a reply")

    source = ListSource(mapping(), [{"n": 1}])
    await run_until(poller_for(source, ScriptedSender(vanish)), lambda: bool(source.settled))
    assert source.settled == [(["id0"], frozenset({"id0"}))]  # released: nothing acknowledged
