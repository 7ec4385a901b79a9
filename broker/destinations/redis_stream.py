"""A Redis stream on Headwater's own Redis (`redis-stream://KEY`): a destination with no cloud at all.

Records are appended and never trimmed. A destination holds what its reader has not read yet (often
failure records that someone must look at), so dropping the oldest behind the reader's back would be
the silent loss Headwater exists to prevent. Whoever consumes the stream removes what it is done with
(`XDEL`, or `XTRIM KEY MINID ...` up to the last entry it processed). If nobody reads it, the stream
grows until Redis reaches `maxmemory`; writes then fail, are counted in
`headwater_destination_delivery_failures_total` and retried, and the events stay in Redis.
"""

from __future__ import annotations

import json

from redis.exceptions import RedisError

from broker.destinations import register
from broker.destinations.base import DestinationKind, Message
from broker.errors import DestinationError

SCHEME = "redis-stream://"


@register
class RedisStream(DestinationKind):
    name = "redis_stream"
    forms = "a Redis stream on Headwater's Redis (redis-stream://KEY)"

    @classmethod
    def matches(cls, target: str) -> bool:
        return target.startswith(SCHEME) and len(target) > len(SCHEME)

    async def send(self, message: Message) -> None:
        fields = {"body": message.body}
        if message.attributes:
            fields["attributes"] = json.dumps({name: value for name, (_, value) in message.attributes.items()})
        try:
            await self.context.redis.xadd(self.target.removeprefix(SCHEME), fields)  # type: ignore[arg-type]
        except (RedisError, OSError) as error:  # every refusal: unreachable, OOM, READONLY, LOADING, timeouts
            raise DestinationError(f"Redis stream {self.target}: {error}") from error
