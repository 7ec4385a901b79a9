"""structlog, configured once per process: JSON lines off a terminal, readable lines on one.

Every line of an invocation carries `function` and `request_id`, bound through contextvars by
`bind_invocation`, so a log search for one request id finds the worker's lines and the handler's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog


def configure(level: str = "INFO", json_output: bool | None = None) -> None:
    as_json = (not sys.stderr.isatty()) if json_output is None else json_output
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


@contextmanager
def bind_invocation(function_name: str, request_id: str) -> Iterator[None]:
    with structlog.contextvars.bound_contextvars(function=function_name, request_id=request_id):
        yield
