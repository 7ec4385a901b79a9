"""An SQS queue, named by ARN or URL, as a destination or dead-letter queue.

Every failure is a `DestinationError`: what AWS refuses (`ClientError`: a missing queue, denied
access, throttling), what never reached it (`BotoCoreError`: `EndpointConnectionError`, timeouts,
missing credentials or region; aiobotocore wraps its HTTP client's errors in these), and `OSError`.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from typing import Any

from broker.destinations import register
from broker.destinations.base import DestinationKind, Message
from broker.errors import DestinationError

ARN = re.compile(r"^arn:aws[\w-]*:sqs:(?P<region>[\w-]+):(?P<account>\d{12}):(?P<name>[\w.-]{1,80})$")
URL = re.compile(r"^https?://[^/]+/(?P<account>\d{12}|queue)/[\w.-]{1,80}$|^https?://[^/]+/\d{12}/[\w.-]{1,80}$")


@register
class SqsQueue(DestinationKind):
    name = "sqs"
    forms = "an SQS queue ARN (arn:aws:sqs:REGION:ACCOUNT:NAME) or queue URL"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._url: str | None = None if ARN.match(self.target) else self.target

    @classmethod
    def matches(cls, target: str) -> bool:
        return bool(ARN.match(target) or (target.startswith(("http://", "https://")) and URL.match(target)))

    async def send(self, message: Message) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # on first use: resolving targets loads no SDK

        try:
            client = await self._connect()
            url = self._url or await self._resolve(client)
            await client.send_message(
                QueueUrl=url,
                MessageBody=message.body,
                MessageAttributes={
                    name: {"DataType": data_type, "StringValue": value}
                    for name, (data_type, value) in message.attributes.items()
                },
            )
        except (BotoCoreError, ClientError, OSError) as error:
            raise DestinationError(f"SQS {self.target}: {error}") from error

    async def _connect(self) -> Any:
        if self._client is None:
            region = self._region()
            self._client = await self._stack.enter_async_context(
                self.context.aws_session.client("sqs", region_name=region)
            )
        return self._client

    async def _resolve(self, client: Any) -> str:
        match = ARN.match(self.target)
        assert match is not None  # a URL target never reaches here
        answer = await client.get_queue_url(QueueName=match["name"], QueueOwnerAWSAccountId=match["account"])
        self._url = str(answer["QueueUrl"])
        return self._url

    def _region(self) -> str | None:
        match = ARN.match(self.target)
        return match["region"] if match else None

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
