"""Invoke payloads: read as the AWS CLI reads them, refused before enqueueing when Lambda would refuse.

Limits are Lambda's: 1 MiB for `Event` (raised from 256 KB in 2026), 6 MiB for `RequestResponse`,
counted in UTF-8 bytes of the JSON text. Text that is not UTF-8, not JSON, or nested deeper than
Python's JSON decoder goes is refused here as `InvalidRequestContentException`, never a traceback.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from broker.errors import InvalidRequestContent, RequestTooLarge
from broker.invocation import InvocationType

EVENT_LIMIT_BYTES = 1_048_576
REQUEST_RESPONSE_LIMIT_BYTES = 6_291_456
CLIENT_CONTEXT_LIMIT = 3_583  # bytes of the base64 header value
_UNPARSABLE = "Could not parse request body into json: Could not parse payload into json"  # AWS's words


def read_argument(argument: str) -> str:
    """`--payload` takes JSON text or `file://path`, as the AWS CLI does."""
    if argument.startswith("file://"):
        path = Path(argument.removeprefix("file://"))
        try:
            return path.read_text(encoding="utf-8")
        except OSError as error:
            raise InvalidRequestContent(f"Could not read payload file {path}: {error.strerror}") from None
    return argument


def to_text(payload: Any) -> str:
    """Python callers may pass JSON text (str or bytes) or a JSON-serialisable value."""
    if isinstance(payload, bytes):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidRequestContent(f"{_UNPARSABLE}: not valid UTF-8 ({error})") from None
    if isinstance(payload, str):
        return payload
    try:
        return json.dumps(payload)
    except (TypeError, ValueError) as error:
        raise InvalidRequestContent(f"Could not serialise payload into json: {error}") from None
    except RecursionError:
        raise InvalidRequestContent("Could not serialise payload into json: it is nested too deeply") from None


def check_client_context(encoded: str | None) -> str | None:
    """X-Amz-Client-Context must be base64 of a JSON object, at most 3,583 bytes, as Lambda requires."""
    if encoded is None:
        return None
    try:
        document = json.loads(base64.b64decode(encoded, validate=True))
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        document = None
    if len(encoded) > CLIENT_CONTEXT_LIMIT or not isinstance(document, dict):
        raise InvalidRequestContent("Client context must be a valid Base64-encoded JSON object")
    return encoded


def check(text: str, invocation_type: InvocationType) -> str:
    """Refuse a payload that is too large or not JSON; return it unchanged otherwise."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:  # a str holding lone surrogates, e.g. from decoding with surrogateescape
        raise InvalidRequestContent(
            f"{_UNPARSABLE}: not valid UTF-8 ({error.reason} at character {error.start})"
        ) from None
    if invocation_type is InvocationType.EVENT and size > EVENT_LIMIT_BYTES:
        raise RequestTooLarge(
            f"{size} byte payload is too large for the Event invocation type (limit {EVENT_LIMIT_BYTES} bytes)"
        )
    if size > REQUEST_RESPONSE_LIMIT_BYTES:
        raise RequestTooLarge(
            f"Request must be smaller than {REQUEST_RESPONSE_LIMIT_BYTES} bytes for the InvokeFunction operation"
        )
    try:
        json.loads(text)
    except ValueError as error:
        raise InvalidRequestContent(f"{_UNPARSABLE}: {error}") from None
    except RecursionError:
        raise InvalidRequestContent(f"{_UNPARSABLE}: it is nested too deeply") from None
    return text
