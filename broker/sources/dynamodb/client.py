"""The DynamoDB Streams calls a mapping makes (DescribeStream, GetShardIterator, GetRecords) and their failures.

The endpoint, region and credentials come from botocore's standard configuration (AWS_ENDPOINT_URL
or AWS_ENDPOINT_URL_DYNAMODB_STREAMS, AWS_REGION...), so the same code talks to DynamoDB Streams
or moto. Failures become the sharded source's errors:

- rate limits (LimitExceeded, Throttling) are `ThrottledError`: the shard's reader backs off;
- an old iterator (ExpiredIterator) is `IteratorExpiredError`, and so is an iterator whose records
  were trimmed under it (TrimmedDataAccess in GetRecords): the reader opens a new one after the
  last record read;
- a sequence number already trimmed (TrimmedDataAccess in GetShardIterator: the records after it
  passed the stream's 24-hour retention) is `TrimmedError`, so the source can start at the oldest
  record still there instead of stalling forever;
- a missing stream in DescribeStream is `StreamNotFoundError` (the source refuses to start, as
  Lambda refuses the mapping); a missing shard in the other calls means it was trimmed away whole,
  so it reads as ended;
- anything else is `SourceError`, retried with backoff.
"""

from __future__ import annotations

import contextlib
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import SourceError
from broker.shard_leases import ShardInfo
from broker.sources.shards import Fetched, IteratorExpiredError, ThrottledError

SERVICE = "dynamodbstreams"
READ_LIMIT = 1000  # GetRecords' largest Limit
DESCRIBE_LIMIT = 100  # DescribeStream's largest Limit
THROTTLE_CODES = frozenset({"LimitExceededException", "ThrottlingException", "RequestLimitExceeded"})
METHODS = {"DescribeStream": "describe_stream", "GetShardIterator": "get_shard_iterator", "GetRecords": "get_records"}


class StreamNotFoundError(SourceError):
    """DescribeStream found no such stream (the table, or its stream, does not exist)."""


class TrimmedError(SourceError):
    """The records after a sequence number are gone: older than the stream's retention."""


class _ShardGoneError(SourceError):
    """The shard no longer exists: trimmed away after it closed."""


class DynamoDbStreamsClient:
    def __init__(self, session: Any, region: str, stream_arn: str) -> None:
        self._session = session
        self.region = region
        self.stream_arn = stream_arn
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await self._exit.enter_async_context(self._session.client(SERVICE, region_name=self.region))

    async def close(self) -> None:
        await self._exit.aclose()

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard DescribeStream lists, page after page, with the parent it was split from."""
        shards: list[ShardInfo] = []
        request: dict[str, Any] = {"StreamArn": self.stream_arn, "Limit": DESCRIBE_LIMIT}
        while True:
            description = (await self._call("DescribeStream", **request)).get("StreamDescription", {})
            for shard in description.get("Shards", []):
                parent = shard.get("ParentShardId")
                shards.append(ShardInfo(shard["ShardId"], (parent,) if parent else ()))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            request["ExclusiveStartShardId"] = last

    async def shard_iterator(self, shard_id: str, kind: str, sequence: str | None = None) -> str | None:
        """GetShardIterator; None when the shard no longer exists."""
        request: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id, "ShardIteratorType": kind}
        if sequence is not None:
            request["SequenceNumber"] = sequence
        try:
            answer = await self._call("GetShardIterator", **request)
        except _ShardGoneError:
            return None
        iterator = answer.get("ShardIterator")
        return str(iterator) if iterator else None

    async def get_records(self, iterator: str, limit: int) -> Fetched:
        try:
            answer = await self._call("GetRecords", ShardIterator=iterator, Limit=min(limit, READ_LIMIT))
        except _ShardGoneError:
            return Fetched([], None)
        except TrimmedError as error:  # the iterator points at records trimmed since: open a new one
            raise IteratorExpiredError(error.message) from error
        return Fetched(answer.get("Records", []), answer.get("NextShardIterator"))

    async def _call(self, operation: str, **request: Any) -> Any:
        method = getattr(self._client, METHODS[operation])
        try:
            return await method(**request)
        except ClientError as error:
            raise self._failure(operation, error) from error
        except BotoCoreError as error:
            raise SourceError(f"DynamoDB Streams {operation} on {self.stream_arn}: {error}") from error

    def _failure(self, operation: str, error: ClientError) -> SourceError:
        code = error.response.get("Error", {}).get("Code", "")
        message = f"DynamoDB Streams {operation} on {self.stream_arn}: {code}: {error}"
        if code in THROTTLE_CODES:
            return ThrottledError(message)
        if code == "ExpiredIteratorException":
            return IteratorExpiredError(message)
        if code == "TrimmedDataAccessException":
            return TrimmedError(message)
        if code == "ResourceNotFoundException":
            if operation == "DescribeStream":
                return StreamNotFoundError(f"Stream not found: {self.stream_arn}")
            return _ShardGoneError(message)
        return SourceError(message)
