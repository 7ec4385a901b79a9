"""The Kinesis calls a mapping makes (ListShards, GetShardIterator, GetRecords) and their failures.

The endpoint, region and credentials come from botocore's standard configuration (AWS_ENDPOINT_URL
or AWS_ENDPOINT_URL_KINESIS, AWS_REGION...), so the same code talks to Kinesis, moto or kinesalite.
Failures become the sharded source's errors: rate limits (ProvisionedThroughputExceeded,
LimitExceeded) are `ThrottledError`, an old iterator is `IteratorExpiredError`, anything else `SourceError`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import SourceError
from broker.shard_leases import ShardInfo
from broker.sources.shards import Fetched, IteratorExpiredError, ThrottledError

THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "LimitExceededException"})
GONE_CODES = frozenset({"ResourceNotFoundException"})


class KinesisClient:
    def __init__(self, session: Any, region: str, stream_name: str) -> None:
        self._session = session
        self.region = region
        self.stream_name = stream_name
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await self._exit.enter_async_context(self._session.client("kinesis", region_name=self.region))

    async def close(self) -> None:
        await self._exit.aclose()

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        request: dict[str, Any] = {"StreamName": self.stream_name}
        while True:
            answer = await self._call("ListShards", **request)
            for shard in answer.get("Shards", []):
                parents = (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                shards.append(ShardInfo(shard["ShardId"], tuple(parent for parent in parents if parent)))
            token = answer.get("NextToken")
            if not token:
                return shards
            request = {"NextToken": token}

    async def shard_iterator(self, shard_id: str, kind: str, sequence: str | None, at: float | None) -> str | None:
        """GetShardIterator; None when the shard no longer exists (trimmed past retention)."""
        request: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": shard_id, "ShardIteratorType": kind}
        if sequence is not None:
            request["StartingSequenceNumber"] = sequence
        if at is not None:
            request["Timestamp"] = datetime.fromtimestamp(at, tz=UTC)
        try:
            answer = await self._call("GetShardIterator", **request)
        except _GoneError:
            return None
        iterator = answer.get("ShardIterator")
        return str(iterator) if iterator else None

    async def get_records(self, iterator: str, limit: int) -> Fetched:
        try:
            answer = await self._call("GetRecords", ShardIterator=iterator, Limit=limit)
        except _GoneError:
            return Fetched([], None)
        return Fetched(answer.get("Records", []), answer.get("NextShardIterator"), answer.get("MillisBehindLatest"))

    async def _call(self, operation: str, **request: Any) -> Any:
        method = getattr(self._client, _snake(operation))
        try:
            return await method(**request)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            message = f"Kinesis {operation} on {self.stream_name}: {code}: {error}"
            if code in THROTTLE_CODES:
                raise ThrottledError(message) from error
            if code == "ExpiredIteratorException":
                raise IteratorExpiredError(message) from error
            if code in GONE_CODES and operation != "ListShards":
                raise _GoneError(message) from error
            raise SourceError(message) from error
        except BotoCoreError as error:
            raise SourceError(f"Kinesis {operation} on {self.stream_name}: {error}") from error


class _GoneError(SourceError):
    """The shard (or its stream) does not exist any more."""


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
