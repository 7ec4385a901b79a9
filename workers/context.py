"""The `context` object a Lambda handler receives, with the attributes Lambda's Python runtime gives."""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any, NamedTuple

# Immutable records as NamedTuples, not dataclasses: this module is loaded in every sandbox before the
# handler, and `dataclasses` would bring `inspect`, `ast` and `dis` along (about 1 MB in each sandbox).


class CognitoIdentity(NamedTuple):
    """Always present, as on Lambda; both fields are None without a Cognito caller."""

    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None


class Client(NamedTuple):
    installation_id: str | None = None
    app_title: str | None = None
    app_version_name: str | None = None
    app_version_code: str | None = None
    app_package_name: str | None = None


class ClientContext(NamedTuple):
    """`custom` and `env` are dicts ({} when the caller sent none), as `parse_client_context` builds them."""

    client: Client | None
    custom: dict[str, Any]
    env: dict[str, Any]


class LambdaContext:
    """Built once per invocation inside the execution environment."""

    def __init__(
        self,
        *,
        aws_request_id: str,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: str,
        log_group_name: str,
        log_stream_name: str,
        deadline_epoch_ms: int,
        client_context: ClientContext | None = None,
    ) -> None:
        self.aws_request_id = aws_request_id
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb  # a string, as on Lambda
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity = CognitoIdentity()
        self.client_context = client_context
        self.tenant_id: str | None = None
        self._deadline_epoch_ms = deadline_epoch_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_epoch_ms - int(time.time() * 1000))

    def log(self, message: str) -> None:
        sys.stdout.write(message if message.endswith("\n") else message + "\n")

    def __repr__(self) -> str:
        return f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r})"


class InvalidClientContextError(ValueError):
    """The caller's client context is not base64 of a JSON object; Lambda refuses it with this message."""

    def __init__(self) -> None:
        super().__init__("Client context must be a valid Base64-encoded JSON object")


def parse_client_context(encoded: str | None) -> ClientContext | None:
    """X-Amz-Client-Context is base64 JSON; a sync caller may pass it, async events never carry it."""
    if not encoded:
        return None
    try:
        document = json.loads(base64.b64decode(encoded, validate=True))
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidClientContextError() from None
    client = document.get("client") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(client, dict | None):
        raise InvalidClientContextError()
    return ClientContext(
        client=Client(**{k: v for k, v in client.items() if k in Client._fields}) if client else None,
        custom=document.get("custom") or {},
        env=document.get("env") or {},
    )
