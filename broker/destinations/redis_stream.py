"""A Redis stream on Headwater's own Redis (`redis-stream://KEY`): a destination with no cloud at all."""

from __future__ import annotations

import json

from redis.exceptions import RedisError

from broker.destinations import register
from broker.destinations.base import Destination, Message
from broker.errors import DestinationError

SCHEME = "redis-stream://"
MAX_LENGTH = 100_000  # approximate cap, so an unread stream cannot eat Redis's memory


@register
class RedisStream(Destination):
    kind = "redis_stream"
    forms = "a Redis stream on Headwater's Redis (redis-stream://KEY)"

    @classmethod
    def matches(cls, target: str) -> bool:
        return target.startswith(SCHEME) and len(target) > len(SCHEME)

    async def send(self, message: Message) -> None:
        fields = {"body": message.body}
        if message.attributes:
            fields["attributes"] = json.dumps({name: value for name, (_, value) in message.attributes.items()})
        try:
            await self.context.redis.xadd(self.target.removeprefix(SCHEME), fields, maxlen=MAX_LENGTH, approximate=True)  # type: ignore[arg-type]
        except (RedisError, OSError) as error:
            raise DestinationError(f"Redis stream {self.target}: {error}") from error
