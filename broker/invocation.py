"""Typed records that cross module boundaries: an invocation, its result, its final outcome.

Raw dicts live only at the edges (the JSON event handed to a handler, an SDK response); inside,
these frozen records travel, and `to_wire`/`from_wire` are their one JSON form on Redis.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class InvocationType(StrEnum):
    EVENT = "Event"  # asynchronous: queued, retried, routed to destinations by the worker
    REQUEST_RESPONSE = "RequestResponse"  # synchronous: the caller (a client or a poller) awaits the result
    DRY_RUN = "DryRun"  # validated, never enqueued


class Status(StrEnum):
    SUCCESS = "success"  # the handler returned a JSON-serialisable value
    FUNCTION_ERROR = "function_error"  # raised, timed out, crashed or could not initialise
    THROTTLED = "throttled"  # refused for lack of concurrency; the handler never ran


class Condition(StrEnum):
    """Why an asynchronous event left the queue, in Lambda's invocation-record words."""

    SUCCESS = "Success"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded"
    ZERO_RESERVED_CONCURRENCY = "ZeroReservedConcurrency"


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Result:
    """What one run of a handler produced; `payload` is JSON text (a value or Lambda's error object)."""

    request_id: str
    status: Status
    payload: str
    error_type: str | None = None
    duration_seconds: float = 0.0
    executed_version: str = "$LATEST"
    log_tail: str | None = None  # the run's last 4 KB of log (START...REPORT), only when the caller asked (Tail)

    @property
    def function_error(self) -> str | None:
        """Lambda's X-Amz-Function-Error: every Python error reaches callers as `Unhandled`."""
        return "Unhandled" if self.status is Status.FUNCTION_ERROR else None

    @property
    def error_message(self) -> str:
        if self.status is Status.SUCCESS:
            return ""
        try:
            decoded = json.loads(self.payload)
        except (ValueError, RecursionError):
            return self.payload
        return str(decoded.get("errorMessage", "")) if isinstance(decoded, dict) else self.payload

    def to_wire(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_wire(cls, text: str | bytes) -> Result:
        fields = {name: value for name, value in json.loads(text).items() if name in _RESULT_FIELDS}
        fields["status"] = Status(fields["status"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decided end for an async event, kept until every destination has taken its record."""

    condition: Condition
    invoke_count: int
    last_result: Result | None
    decided_at: float


@dataclass(frozen=True, slots=True)
class Invocation:
    """One request to run a function: an async event, a sync call, or one event source batch."""

    function_name: str
    payload: str
    invocation_type: InvocationType
    trigger: str
    request_id: str = field(default_factory=new_request_id)
    accepted_at: float = field(default_factory=time.time)
    invoke_count: int = 0  # runs made by earlier attempts (approximateInvokeCount so far)
    throttle_count: int = 0  # consecutive throttles, for the backoff; never spends retries
    reply_to: str | None = None  # where a waiting caller listens for the Result
    client_context: str | None = None
    tail_log: bool = False  # X-Amz-Log-Type: Tail: the caller wants the run's log back in its Result
    last_result: Result | None = None
    outcome: Outcome | None = None
    delivered: tuple[str, ...] = ()  # destinations already written, so a retry never writes twice
    delivery_attempts: int = 0

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.accepted_at)

    def replace(self, **changes: Any) -> Invocation:
        return dataclasses.replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        wire = dataclasses.asdict(self)
        wire["last_result"] = self.last_result and json.loads(self.last_result.to_wire())
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Invocation:
        """Read the wire form; fields a newer release added are ignored (a rolling upgrade runs
        both releases on one queue), while a missing or mistyped field raises."""
        fields = {name: value for name, value in wire.items() if name in _INVOCATION_FIELDS}
        for name in ("function_name", "payload", "request_id"):
            if not isinstance(fields.get(name), str):
                raise TypeError(f"{name} must be a string")
        fields["invocation_type"] = InvocationType(fields["invocation_type"])
        fields["delivered"] = tuple(fields.get("delivered", ()))
        fields["last_result"] = _result_or_none(fields.get("last_result"))
        outcome = fields.get("outcome")
        if outcome is not None:
            fields["outcome"] = Outcome(
                condition=Condition(outcome["condition"]),
                invoke_count=outcome["invoke_count"],
                last_result=_result_or_none(outcome["last_result"]),
                decided_at=outcome["decided_at"],
            )
        return cls(**fields)


_RESULT_FIELDS = frozenset(field.name for field in dataclasses.fields(Result))
_INVOCATION_FIELDS = frozenset(field.name for field in dataclasses.fields(Invocation))


def _result_or_none(wire: dict[str, Any] | None) -> Result | None:
    return None if wire is None else Result.from_wire(json.dumps(wire))
