"""The messages one SQS mapping holds: received, not settled yet, and kept invisible meanwhile.

Every message received is *held* until settled: received invisible for VisibilityTimeout (at least
`MINIMUM_HOLD_SECONDS`), and extended by `keep_alive` before that lapses, so a batch waiting behind a
backlog never reappears and runs twice. A failed message reappears when Lambda's would,
VisibilityTimeout after its receive (shortened back if we held it longer, floor 0); one never
extended is left alone, as SQS brings it back at exactly that moment.

The hold has a cap: SQS refuses to keep a message invisible longer than 12 hours after its receive,
so a message is held at most `MAXIMUM_HOLD_SECONDS` (12 hours less a margin); its batch's deadline
is that moment, after which the poller releases it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from broker.sources.sqs.client import QueueClient

EXTEND_MARGIN_SECONDS = 1.5  # the poller calls keep_alive every 0.5 s
# Messages are received, and extended, invisible for at least this long: with a tiny
# VisibilityTimeout a slow receive or one late keep-alive tick would otherwise let a batch that is
# still running reappear. Failed messages are shortened back to VisibilityTimeout after their
# receive; the one price is that after a poller crash its messages return within this time.
MINIMUM_HOLD_SECONDS = 5
SQS_VISIBILITY_LIMIT_SECONDS = 12 * 3600  # SQS: at most 12 hours invisible after a receive
MAXIMUM_HOLD_SECONDS = SQS_VISIBILITY_LIMIT_SECONDS - 60  # the last extension must still be accepted


@dataclass(slots=True)
class Held:
    """A message received and not settled yet, and until when SQS keeps it invisible."""

    receipt_handle: str  # the latest: SQS deletes a message received twice only by its newest handle
    received_at: float  # monotonic
    visible_at: float  # monotonic; moved forward by keep_alive


class Holding:
    """The held messages by messageId, and the visibility changes that keep or give them back."""

    def __init__(self, queue: QueueClient) -> None:
        self._queue = queue
        self._held: dict[str, Held] = {}
        self.visibility_timeout = 30  # the queue's, read when the source starts

    @property
    def hold_seconds(self) -> int:
        return max(self.visibility_timeout, MINIMUM_HOLD_SECONDS)

    def hold(self, message: dict[str, Any], received_at: float) -> bool:
        """Hold a message just received; False when it was held already (SQS delivers at least once,
        and a lapsed visibility hands a message out again): then only its receipt handle and
        visibility are renewed, and it must not run a second time."""
        visible_at = received_at + self.hold_seconds
        held = self._held.get(message["MessageId"])
        if held is not None:
            held.receipt_handle, held.visible_at = message["ReceiptHandle"], visible_at
            return False
        self._held[message["MessageId"]] = Held(message["ReceiptHandle"], received_at, visible_at)
        return True

    def renew_handle(self, message: dict[str, Any]) -> bool:
        """Take a held message's newest receipt handle; False when the message is not held here."""
        held = self._held.get(message["MessageId"])
        if held is None:
            return False
        held.receipt_handle = message["ReceiptHandle"]
        return True

    def let_go(self, item_ids: Iterable[str]) -> list[Held]:
        """Stop holding these messages; returns those that were held."""
        popped = [self._held.pop(item_id, None) for item_id in item_ids]
        return [held for held in popped if held is not None]

    def deadline(self, item_ids: Iterable[str]) -> float | None:
        """MAXIMUM_HOLD_SECONDS after the receive of the oldest of these messages still held."""
        received = [held.received_at for item_id in item_ids if (held := self._held.get(item_id))]
        return min(received) + MAXIMUM_HOLD_SECONDS if received else None

    async def keep_alive(self) -> None:
        """Extend every held message whose visibility lapses soon, never past MAXIMUM_HOLD_SECONDS
        after its receive."""
        now = time.monotonic()
        margin = max(EXTEND_MARGIN_SECONDS, self.hold_seconds / 2)
        due = {
            held.receipt_handle: (held, seconds)
            for held in self._held.values()
            if held.visible_at - now < margin
            and (seconds := min(self.hold_seconds, math.floor(held.received_at + MAXIMUM_HOLD_SECONDS - now))) > 0
        }
        extended = await self._queue.change_visibility([(handle, seconds) for handle, (_, seconds) in due.items()])
        for handle, (held, seconds) in due.items():
            if handle in extended:
                held.visible_at = now + seconds

    async def give_back(self, returning: list[Held]) -> None:
        """Let failed messages reappear when Lambda's would: VisibilityTimeout after their receive.
        One never extended is left alone: SQS brings it back at exactly that moment."""
        now = time.monotonic()
        await self._queue.change_visibility(
            [
                (held.receipt_handle, max(0, math.ceil(held.received_at + self.visibility_timeout - now)))
                for held in returning
                if held.visible_at > held.received_at + self.visibility_timeout
            ]
        )
