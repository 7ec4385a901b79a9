"""The Kafka commit rounds (`broker.sources.kafka.commits.Committer`), on a commit function that
records each request it is given and holds it until the test lets it go: what goes in one request,
what a settle and a revoke wait for, and what happens once the committer stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from broker.sources.kafka.commits import Committer, Note


class Broker:
    """Stands where aiokafka's commit is: every request is recorded, then held until `release`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Note]] = []
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def commit(self, notes: dict[str, Note]) -> None:
        self.requests.append(notes)
        self.arrived.set()
        await self.gate.wait()

    async def next_request(self) -> dict[str, Note]:
        await asyncio.wait_for(self.arrived.wait(), 5)
        self.arrived.clear()
        return self.requests[-1]

    def release(self) -> None:
        self.gate.set()
        self.gate = asyncio.Event()


@pytest.fixture
async def broker() -> Broker:
    return Broker()


@pytest.fixture
async def committer(broker: Broker) -> AsyncIterator[Committer]:
    committer = Committer(broker.commit)
    task = asyncio.ensure_future(committer.run())
    yield committer
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_partitions_settled_while_a_request_is_out_go_together_in_the_next(
    committer: Committer, broker: Broker
) -> None:
    first = committer.note("t-0", offset=10, since=0, epoch=1)
    assert await broker.next_request() == {"t-0": Note(10, 0, 1)}
    second = committer.note("t-1", offset=5, since=0, epoch=1)
    third = committer.note("t-2", offset=7, since=3, epoch=1)
    assert not first.done()  # its request is still out
    broker.release()
    await asyncio.wait_for(first, 5)
    assert await broker.next_request() == {"t-1": Note(5, 0, 1), "t-2": Note(7, 3, 1)}
    assert not second.done()
    assert not third.done()
    broker.release()
    await asyncio.wait_for(asyncio.gather(second, third), 5)
    assert len(broker.requests) == 2


async def test_a_later_batch_of_a_partition_replaces_its_note_and_keeps_where_it_began(
    committer: Committer, broker: Broker
) -> None:
    committer.note("t-0", offset=10, since=0, epoch=1)
    await broker.next_request()
    committer.note("t-0", offset=20, since=10, epoch=1)
    committer.note("t-0", offset=30, since=20, epoch=1)  # both settled while the first request is out
    committer.note("t-1", offset=4, since=2, epoch=1)
    committer.note("t-1", offset=9, since=0, epoch=2)  # reassigned meanwhile: counted from its new start
    broker.release()
    assert await broker.next_request() == {"t-0": Note(30, 10, 1), "t-1": Note(9, 0, 2)}
    broker.release()


async def test_a_revoke_waits_for_the_request_covering_its_partition(committer: Committer, broker: Broker) -> None:
    committer.note("t-0", offset=10, since=0, epoch=1)
    await broker.next_request()
    revoked = asyncio.ensure_future(committer.flush(["t-0"]))
    unrelated = asyncio.ensure_future(committer.flush(["t-9"]))
    await asyncio.wait_for(unrelated, 5)  # nothing of t-9 noted or out: nothing to wait for
    await asyncio.sleep(0)
    assert not revoked.done()
    broker.release()
    await asyncio.wait_for(revoked, 5)


async def test_a_revoke_waits_for_a_note_not_yet_sent(committer: Committer, broker: Broker) -> None:
    committer.note("t-0", offset=10, since=0, epoch=1)
    await broker.next_request()
    committer.note("t-1", offset=3, since=0, epoch=1)  # waits for the next round
    revoked = asyncio.ensure_future(committer.flush(["t-1"]))
    broker.release()
    assert await broker.next_request() == {"t-1": Note(3, 0, 1)}
    assert not revoked.done()
    broker.release()
    await asyncio.wait_for(revoked, 5)


async def test_once_stopped_nothing_waits_and_nothing_is_committed(broker: Broker) -> None:
    committer = Committer(broker.commit)
    task = asyncio.ensure_future(committer.run())
    committer.note("t-0", offset=10, since=0, epoch=1)
    await broker.next_request()
    waiting = committer.note("t-1", offset=3, since=0, epoch=1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    await asyncio.wait_for(waiting, 5)  # released, not left hanging: the records come again
    await asyncio.wait_for(committer.note("t-2", offset=1, since=0, epoch=1), 5)
    await asyncio.wait_for(committer.flush(["t-1", "t-2"]), 5)
    assert broker.requests == [{"t-0": Note(10, 0, 1)}]
