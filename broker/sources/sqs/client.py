"""The SQS calls an SQS mapping makes, ten entries at a time, with failures as `SourceError`.

The endpoint comes from botocore's standard variables (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`),
the region from the queue ARN. A deletion that fails for a reason on SQS's side is retried; one
refused for the request itself (an expired receipt handle: the message is already back in the
queue) is logged, since the message will be processed again.

Receives, and deletions, go one call at a time per mapping. SQS does not need it, but moto (which
the tests and many development setups use) is not safe under concurrent calls on one queue: two
receives can hand out the same message, two deletions can bring each other's messages back. One
call moves ten messages, so the cost is small; the one visible effect is that on a quiet queue
with several batch loops, a batching window can last until the current long poll ends (up to
20 s), which Lambda's documentation allows for SQS as well.

A receive is never abandoned once sent: SQS would still hand that request up to ten messages,
hidden for their visibility timeout and counted as received, with nobody to process them. A
receive whose caller is cancelled mid-call (the poller stopping) runs on; `abandoned_messages`
waits for such receives and returns what they brought, for the source to hand back at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import ConfigError, SourceError
from broker.logs import get_logger

ENTRIES_PER_CALL = 10
DELETE_ATTEMPTS = 3
MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
MISSING_QUEUE_MESSAGE = (  # Lambda's own words when a mapping names a queue that does not exist
    "Error occurred while ReceiveMessage. SQS Error Code: AWS.SimpleQueueService.NonExistentQueue. "
    "SQS Error Message: The specified queue does not exist. ({arn})"
)
# Every request is built here, from values already checked, so botocore's own check of each call's
# parameters (a few percent of a busy poller's time) is skipped.
UNCHECKED = AioConfig(parameter_validation=False)
log = get_logger(__name__)
T = TypeVar("T")


class QueueClient:
    def __init__(self, arn: str, region: str) -> None:
        self.arn = arn
        self.region = region
        self.url = ""
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._receiving = asyncio.Lock()
        self._deleting = asyncio.Lock()
        self._abandoned: set[asyncio.Future[dict[str, Any]]] = set()  # receives whose caller was cancelled

    async def connect(self, session: Any, name: str, account: str, owner: str) -> None:
        """Open the client and find the queue; a missing queue is a ConfigError in Lambda's words."""
        client = session.client("sqs", region_name=self.region, config=UNCHECKED)
        self._client = await self._stack.enter_async_context(client)
        try:
            answer = await self._client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in MISSING_QUEUE:
                raise ConfigError([MISSING_QUEUE_MESSAGE.format(arn=self.arn)], owner) from None
            raise SourceError(f"SQS GetQueueUrl for {self.arn}: {error}") from error
        except BotoCoreError as error:
            raise SourceError(f"SQS GetQueueUrl for {self.arn}: {error}") from error
        self.url = str(answer["QueueUrl"])

    async def close(self) -> None:
        await self._stack.aclose()

    async def visibility_timeout(self) -> int:
        answer = await self._call("get_queue_attributes", QueueUrl=self.url, AttributeNames=["VisibilityTimeout"])
        return int(answer["Attributes"]["VisibilityTimeout"])

    async def receive(self, count: int, wait_seconds: int, visibility_seconds: int) -> list[dict[str, Any]]:
        """ReceiveMessage with every attribute. Cancelled while waiting for its turn, nothing is sent;
        cancelled once sent, the call runs on and its messages go to `abandoned_messages`."""
        async with self._receiving:
            log.debug("receiving", queue=self.arn, wait_seconds=wait_seconds)
            call = asyncio.ensure_future(
                self._call(
                    "receive_message",
                    QueueUrl=self.url,
                    MaxNumberOfMessages=count,
                    WaitTimeSeconds=wait_seconds,
                    VisibilityTimeout=visibility_seconds,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            )
            try:
                answer = await asyncio.shield(call)
            except asyncio.CancelledError:
                # Not awaited here: a stopping mapping is Disabled once its batches settled, not after
                # a long poll's 20 s; the source's stop hands back what it brings, later (`take_abandoned`).
                if not call.done() or (not call.cancelled() and call.exception() is None):
                    self._abandoned.add(call)
                raise
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages

    def take_abandoned(self) -> list[asyncio.Future[dict[str, Any]]]:
        """The receives whose caller was cancelled (the poller stopping); the caller now owes the
        hand-back of what they bring (see `abandoned_messages`)."""
        calls, self._abandoned = list(self._abandoned), set()
        return calls

    @staticmethod
    async def abandoned_messages(calls: list[asyncio.Future[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Wait for receives cut off by a stop; the messages they brought (none from one that failed)."""
        messages: list[dict[str, Any]] = []
        for call in calls:
            try:
                messages += (await call).get("Messages", [])
            except SourceError as error:
                log.warning("a receive cut off by the stop failed; it brought nothing", error=error.message)
        return messages

    async def delete(self, receipt_handles: list[str]) -> int:
        """DeleteMessageBatch, retrying what failed on SQS's side; returns how many were deleted."""
        deleted, pending = 0, receipt_handles
        for attempt in range(DELETE_ATTEMPTS):
            if not pending:
                return deleted
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            done, pending = await self._delete_once(pending)
            deleted += done
        if pending:
            log.warning("messages could not be deleted; they will be processed again", count=len(pending))
        return deleted

    async def _delete_once(self, receipt_handles: list[str]) -> tuple[int, list[str]]:
        deleted, retry = 0, []
        for chunk in chunks(receipt_handles, ENTRIES_PER_CALL):
            entries = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(chunk)]
            try:
                async with self._deleting:
                    answer = await self._call("delete_message_batch", QueueUrl=self.url, Entries=entries)
            except SourceError as error:
                log.warning("delete failed; retrying", error=error.message)
                retry += chunk
                continue
            deleted += len(answer.get("Successful", []))
            for failure in answer.get("Failed", []):
                if failure.get("SenderFault"):
                    log.warning("message not deleted; it will be processed again", code=failure.get("Code"))
                else:
                    retry.append(chunk[int(failure["Id"])])
        return deleted, retry

    async def change_visibility(self, changes: list[tuple[str, int]]) -> set[str]:
        """ChangeMessageVisibilityBatch for (receipt handle, seconds); returns the handles changed."""
        changed: set[str] = set()
        for chunk in chunks(changes, ENTRIES_PER_CALL):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                for i, (handle, seconds) in enumerate(chunk)
            ]
            answer = await self._call("change_message_visibility_batch", QueueUrl=self.url, Entries=entries)
            failed = {failure["Id"] for failure in answer.get("Failed", [])}
            changed.update(handle for i, (handle, _) in enumerate(chunk) if str(i) not in failed)
        return changed

    async def _call(self, operation: str, **arguments: Any) -> dict[str, Any]:
        """One SQS call; any failure is a retryable SourceError (nothing was acknowledged)."""
        try:
            answer: dict[str, Any] = await getattr(self._client, operation)(**arguments)
        except (BotoCoreError, ClientError) as error:
            raise SourceError(f"SQS {operation} on {self.arn}: {error}") from error
        return answer


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
