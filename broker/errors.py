"""Every error Headwater raises on purpose, in one tree.

    HeadwaterError                     may the same call succeed later?
    ├── ConfigError                    no   the configuration file or model is invalid
    ├── InvokeError                         an Invoke request was refused (Lambda's 4xx family)
    │   ├── FunctionNotFound           no   ResourceNotFoundException (404)
    │   ├── InvalidRequestContent      no   InvalidRequestContentException (400): not JSON
    │   ├── RequestTooLarge            no   RequestEntityTooLargeException (413)
    │   ├── InvalidParameterValue      no   InvalidParameterValueException (400)
    │   └── TooManyRequests            yes  TooManyRequestsException (429): throttled
    ├── InvocationTimedOut             yes  a RequestResponse caller gave up waiting
    ├── StoreUnavailable               yes  Redis is unreachable or refuses writes (OOM, READONLY, LOADING)
    ├── DestinationError               yes  a destination or DLQ could not be written
    └── SourceError                    yes  an event source could not be read or acknowledged
        └── BatchLostError             yes  a batch's invocation will never answer; hand it back

Each error carries Lambda's `code` and HTTP `status`, so the CLI, the Python client and any API
speak the same error language as a Lambda user already knows.
"""

from __future__ import annotations


class HeadwaterError(Exception):
    """Base of every deliberate error; the tree above says which ones retrying can help."""

    code = "ServiceException"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(HeadwaterError):
    """The configuration is invalid; `problems` lists each one with its path, value and rule."""

    code = "InvalidConfiguration"
    status = 400

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        self.source = source
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} error(s)\n{listing}")


class InvokeError(HeadwaterError):
    """An Invoke request refused before anything was enqueued."""

    status = 400


class FunctionNotFound(InvokeError):
    code = "ResourceNotFoundException"
    status = 404


class InvalidRequestContent(InvokeError):
    code = "InvalidRequestContentException"


class RequestTooLarge(InvokeError):
    code = "RequestEntityTooLargeException"
    status = 413


class InvalidParameterValue(InvokeError):
    code = "InvalidParameterValueException"


class TooManyRequests(InvokeError):
    code = "TooManyRequestsException"
    status = 429

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvocationTimedOut(HeadwaterError):
    """No result came back in time; the invocation itself may still run (at-least-once)."""

    code = "InvocationTimedOut"
    status = 504


class StoreUnavailable(HeadwaterError):
    """Headwater's Redis cannot take the request now; nothing was accepted unless the message says so."""

    code = "ServiceUnavailableException"
    status = 503


class DestinationError(HeadwaterError):
    """A record could not be written to its destination; the event is kept and retried."""

    code = "DestinationDeliveryFailure"


class SourceError(HeadwaterError):
    """An event source did not answer (network, throttling, 5xx); the poller backs off and retries.

    Nothing is acknowledged when this is raised, so the records it concerns come back.
    """

    code = "EventSourceError"
    status = 502


class BatchLostError(SourceError):
    """A batch's invocation will never answer (its job was deleted or quarantined, or the source's
    hold limit passed): the poller hands the batch back to its source, which redelivers it."""

    code = "BatchLost"
