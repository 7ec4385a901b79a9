"""Errors as botocore parses them, so boto3 raises its modeled exception classes.

Every error answer carries `x-amzn-ErrorType: <Code>` (botocore takes the code from this header
first) and a JSON body `{"Type": "User"|"Service", "<message key>": "..."}`. The message key's case
follows Lambda's shapes: `Message` for ResourceNotFound, Service and ResourceInUse, `message` for
the rest; botocore reads either, but a shape's other members (`Reason` of a throttle) only when the
body matches the shape. A status of 500 or more is sent only before anything ran: SDKs retry it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from broker.errors import HeadwaterError, StoreUnavailable, TooManyRequests

CAPITAL_MESSAGE_CODES = frozenset({"ResourceNotFoundException", "ServiceException", "ResourceInUseException"})
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


@dataclass
class ApiError(Exception):
    """One refused request: Lambda's error code, HTTP status and message, plus shape members."""

    code: str
    status: int
    message: str
    error_type: str = "User"
    members: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def response(self, request_id: str) -> Response:
        key = "Message" if self.code in CAPITAL_MESSAGE_CODES else "message"
        body = {"Type": self.error_type, key: self.message, **self.members}
        headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": self.code, **self.headers}
        return Response(json.dumps(body), self.status, headers, media_type="application/json")


def from_headwater(error: HeadwaterError) -> ApiError:
    """Our one error tree in Lambda's words. A store that cannot take the call is Lambda's modeled
    `ServiceException` (retryable: nothing ran); a throttle keeps its `Reason`."""
    if isinstance(error, TooManyRequests):
        return ApiError(error.code, error.status, error.message, members={"Reason": error.reason})
    if isinstance(error, StoreUnavailable):
        return ApiError("ServiceException", 503, error.message, error_type="Service")
    return ApiError(error.code, error.status, error.message)


def invalid_parameter(message: str) -> ApiError:
    return ApiError("InvalidParameterValueException", 400, message)


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", 404, message)


def validation(message: str) -> ApiError:
    """Lambda's unmodeled `ValidationException` ("1 validation error detected: ...")."""
    return ApiError("ValidationException", 400, f"1 validation error detected: {message}")


def unknown_operation(method: str, path: str) -> ApiError:
    return ApiError("UnknownOperationException", 404, f"Unknown operation: {method} {path[:256]}")


def missing_authentication() -> ApiError:
    return ApiError("MissingAuthenticationTokenException", 403, "Missing Authentication Token")


def incomplete_signature(message: str) -> ApiError:
    return ApiError("IncompleteSignatureException", 400, message)


def unrecognized_client() -> ApiError:
    return ApiError("UnrecognizedClientException", 403, "The security token included in the request is invalid.")


def invalid_signature(message: str = SIGNATURE_MISMATCH) -> ApiError:
    return ApiError("InvalidSignatureException", 403, message)
