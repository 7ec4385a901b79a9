"""A `headwater poll` process stopped (SIGTERM) in the middle of a long poll, on ElasticMQ.

SQS still hands a long poll that the client walked away from up to ten messages: hidden for their
visibility timeout and counted as received, with nobody to run them. The poller lets the receive in
flight finish and hands what it brought back at once, so nothing stays hidden.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest

from tests.sources.conftest import SqsHarness, SqsService
from tests.sources.contract import Stack, bodies, kill

VISIBILITY_TIMEOUT_SECONDS = 60  # long enough that a hidden message could not pass for a returned one
LONG_POLL_SECONDS = 6


@pytest.fixture
def source_env(sqs_service: SqsService) -> dict[str, str]:
    return sqs_service.env


def _log(poller: Any) -> str:
    return str(poller.log_path.read_text(errors="replace"))


def _long_poll_started(poller: Any) -> bool:
    """A receive long enough to stop the poller and send messages while it is still open (a poll
    waits as long as the queue has been quiet: this one comes after about LONG_POLL_SECONDS)."""
    waits = [int(found) for found in re.findall(r'"wait_seconds": (\d+)', _log(poller))]
    return bool(waits) and waits[-1] >= LONG_POLL_SECONDS


@pytest.mark.parametrize("sqs_service", ["elasticmq"], indirect=True)
async def test_a_long_poll_in_flight_at_sigterm_hands_its_messages_back(stack: Stack, harness: SqsHarness) -> None:
    await harness.create(visibility_timeout=VISIBILITY_TIMEOUT_SECONDS)
    ns = stack.namespace()
    stack.env["HEADWATER_LOG_LEVEL"] = "DEBUG"  # the poller logs each receive it sends
    poller = stack.spawn_poller([harness.mapping()], grace_seconds=20)
    await stack.wait_for(lambda: _long_poll_started(poller), what="a long poll in flight")
    kill(poller, signal.SIGTERM)
    await stack.wait_for(lambda: "stopping: no new reads" in _log(poller), what="the poller to stop reading")
    await harness.send(bodies(ns, 3))  # they arrive while that long poll is still open
    await stack.wait_for(lambda: not poller.running, what="the poller to exit once its receive returned")
    assert poller.returncode == 0
    answer = await harness.client.get_queue_attributes(
        QueueUrl=harness.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    counts = answer["Attributes"]
    assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == ("3", "0"), (
        "every message is visible again at once",
        _log(poller)[-3000:],
    )
    received = await harness.client.receive_message(
        QueueUrl=harness.url, MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"]
    )
    messages = received.get("Messages", [])
    assert len(messages) == 3
    receive_counts = sorted(message["Attributes"]["ApproximateReceiveCount"] for message in messages)
    # The long poll returns as soon as one message is there; any it took counts one receive, then this one.
    assert "2" in receive_counts, ("the stopped poller's receive brought messages and handed them back", receive_counts)
    assert set(receive_counts) <= {"1", "2"}, receive_counts
    assert stack.attempts(ns) == {}, "nothing read after the stop was run"
    assert "handing back messages a receive brought after the stop" in _log(poller)
