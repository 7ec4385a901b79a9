"""Lambda's invocation record and dead-letter message, built from a decided outcome.

Key order follows what AWS emits (version, timestamp, requestContext, requestPayload,
responseContext, responsePayload), so a consumer comparing bytes with Lambda sees the same text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from broker.destinations.base import Message
from broker.invocation import Condition, Invocation, Outcome, Status

ERROR_MESSAGE_LIMIT_BYTES = 1024


def function_arn(region: str, account_id: str, function_name: str, qualifier: str | None = "$LATEST") -> str:
    arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def iso_timestamp(epoch_seconds: float) -> str:
    """Lambda's record timestamp: UTC, millisecond precision, `Z` suffix."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def invocation_record(invocation: Invocation, outcome: Outcome, qualified_arn: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_timestamp(outcome.decided_at),
        "requestContext": {
            "requestId": invocation.request_id,
            "functionArn": qualified_arn,
            "condition": outcome.condition.value,
            "approximateInvokeCount": outcome.invoke_count,
        },
        "requestPayload": _decoded(invocation.payload),
    }
    result = outcome.last_result
    if result is not None and outcome.condition is not Condition.ZERO_RESERVED_CONCURRENCY:
        context: dict[str, Any] = {"statusCode": 200, "executedVersion": result.executed_version}
        if result.function_error:
            context["functionError"] = result.function_error
        record["responseContext"] = context
        record["responsePayload"] = _decoded(result.payload)
    return record


def _decoded(text: str) -> Any:
    """The JSON value of a payload; a payload Python's decoder refuses (nested too deeply) stays text,
    so a record is still written rather than the event being stuck."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def dead_letter_message(invocation: Invocation, outcome: Outcome) -> Message:
    """The original event, unchanged, with Lambda's three attributes saying why it is here."""
    result = outcome.last_result
    if result is not None and result.status is Status.FUNCTION_ERROR:
        code, text = "200", result.error_message
    else:  # never ran (reserved concurrency 0) or aged out while throttled: no function error to quote
        code, text = "429", f"Event discarded: {outcome.condition.value}"
    return Message(
        body=invocation.payload,
        attributes={
            "RequestID": ("String", invocation.request_id),
            "ErrorCode": ("Number", code),
            "ErrorMessage": ("String", _truncate_utf8(text or outcome.condition.value, ERROR_MESSAGE_LIMIT_BYTES)),
        },
    )


def _truncate_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")
