"""StartingPosition AT_TIMESTAMP: a mapping with no checkpoint starts at the first record that arrived at or
after StartingPositionTimestamp, on both Kinesis implementations."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from tests.harness import none_left
from tests.kinesis.conftest import KinesisHarness
from tests.sources.contract import Stack, bodies

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("kinesis_endpoint", ["moto", "kinesalite"], indirect=True),
]
# botocore sends GetShardIterator's Timestamp in whole seconds: the moment is a whole second, with the
# records on either side of it by a clear margin.
MARGIN_SECONDS = 0.2


async def test_at_timestamp_starts_at_the_first_record_after_it(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await harness.send(bodies(ns, 2, prefix="before-"))
    moment = math.floor(time.time() + MARGIN_SECONDS) + 1
    await asyncio.sleep(moment + MARGIN_SECONDS - time.time())
    await harness.send(bodies(ns, 2, prefix="after-"))
    mapping = harness.mapping(StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp=moment)
    await stack.start_poller([mapping])
    await stack.wait_for(lambda: len(stack.attempts(ns)) >= 2, what="the records after the timestamp")
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed to the shard's end")
    # One shard, read in order: a record before the timestamp would have run before these.
    assert stack.attempts(ns) == {"after-1": 1, "after-2": 1}
