"""How a failure reaches the operator: one line, never a traceback, never a Redis password.

This is the one CLI module that names the store's failure classes (`broker.connection` exports them):
it tells an unreachable Redis from one refusing writes, to say which and what to do about it.
"""

from __future__ import annotations

from broker.connection import StoreConnectionError, StoreError, StoreTimeoutError, redacted, refuses_writes
from broker.errors import HeadwaterError, TooManyRequests

STORE_ERRORS = (StoreError,)


def problem(error: HeadwaterError | StoreError, url: str) -> str:
    """The line to print for an expected failure of a command run against the Redis at `url`."""
    if isinstance(error, StoreError):
        return _redis_problem(error, url)
    if isinstance(error.__cause__, StoreError) and not isinstance(error, TooManyRequests):
        return _redis_problem(error.__cause__, url)
    reason = f" (Reason: {error.reason})" if isinstance(error, TooManyRequests) else ""
    return f"{error.code}: {error.message}{reason}"


def _redis_problem(error: StoreError, url: str) -> str:
    if refuses_writes(error):
        return f"Redis at {redacted(url)} refuses writes ({error}); nothing was changed, try again later"
    if isinstance(error, (StoreConnectionError, StoreTimeoutError)):
        cause = error.__cause__ or error.__context__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(error).rstrip(".")
        return f"cannot reach Redis at {redacted(url)} ({reason}); set HEADWATER_REDIS_URL or --redis-url"
    return f"Redis at {redacted(url)} answered with an error: {error}"
