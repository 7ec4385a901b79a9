"""The execution environment: a child process that imports one handler once and runs it many times.

Running the handler in its own process is what lets a timeout be enforced the way Lambda enforces
it: the environment is killed, whatever the handler is doing, and the next invocation starts a new
one (a cold start). It also keeps a crashing or leaking handler away from the worker's queue state.
Messages on the pipe are JSON bytes, never pickles. This module imports little on purpose: it
runs in every environment before the user's code.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import select
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from workers.context import LambdaContext, parse_client_context

_current = {"request_id": "", "function": ""}


def serve(connection: Connection, spec_json: str) -> None:
    """Entry point of the child: INIT once, then answer invocations until the pipe closes."""
    spec = json.loads(spec_json)
    _die_with_worker(spec["worker_pid"])
    _current["function"] = spec["function_name"]
    os.environ.update(spec["environment"])
    _capture_output()
    handler, init_error = _load_handler(spec["module"], spec["attribute"])
    # INIT's outcome goes first: the worker starts the function's timeout only once INIT is over.
    connection.send_bytes(json.dumps(init_error or {"status": "ready"}).encode())
    if init_error is not None:  # the invocation reports it, and the next one starts a fresh INIT
        return
    while True:
        try:
            request = json.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        connection.send_bytes(json.dumps(_invoke(handler, spec, request)).encode())


def _die_with_worker(worker_pid: int) -> None:
    """A sandbox must not outlive its worker: a killed worker's invocation is cut off, not left
    running unseen while the job runs again elsewhere. The sandbox's parent is the forkserver,
    which itself stays up while any sandbox lives, so we watch the worker directly: a pidfd
    becomes readable when that process ends."""
    try:
        watched = os.pidfd_open(worker_pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): the worker's heartbeat still recovers the job
        return

    def watch() -> None:
        select.select([watched], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()


def _load_handler(module_name: str, attribute: str) -> tuple[Any, dict[str, Any] | None]:
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as error:
        return None, _failure("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {error}")
    except Exception as error:  # any import failure is the user's, reported as Lambda reports it
        return None, _failure("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {error}")
    handler = getattr(module, attribute, None)
    if not callable(handler):
        return None, _failure("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'")
    return handler, None


def _invoke(handler: Any, spec: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    request_id = request["request_id"]
    _current["request_id"] = request_id
    context = LambdaContext(
        aws_request_id=request_id,
        function_name=spec["function_name"],
        function_version="$LATEST",
        invoked_function_arn=spec["function_arn"],
        memory_limit_in_mb=str(spec["memory_size"]),
        log_group_name=spec["log_group_name"],
        log_stream_name=spec["log_stream_name"],
        deadline_epoch_ms=request["deadline_ms"],
        client_context=parse_client_context(request.get("client_context")),
    )
    started = time.perf_counter()
    try:
        value = handler(json.loads(request["payload"]), context)
    except Exception as error:  # a handler's exception is its result, not our failure
        outcome = _failure(type(error).__name__, str(error), request_id, _user_frames(error))
        _emit("error", f"[ERROR] {type(error).__name__}: {error}", stackTrace=outcome["stackTrace"])
    else:
        try:
            outcome = {"status": "success", "payload": json.dumps(value), "error_type": None}
        except (TypeError, ValueError) as error:
            outcome = _failure("Runtime.MarshalError", f"Unable to marshal response: {error}", request_id)
    outcome["duration_seconds"] = time.perf_counter() - started
    _current["request_id"] = ""
    return outcome


def _failure(error_type: str, message: str, request_id: str = "", stack: list[str] | None = None) -> dict[str, Any]:
    body = {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": stack or []}
    return {
        "status": "function_error",
        "payload": json.dumps(body),
        "error_type": error_type,
        "stackTrace": stack or [],
    }


def _user_frames(error: BaseException) -> list[str]:
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename != __file__]
    return traceback.format_list(frames)


# -- output capture: every line a handler prints or logs becomes a JSON log line with its request id
def _emit(level: str, message: str, **fields: Any) -> None:
    line = {
        "event": message,
        "level": level,
        "logger": "handler",
        "function": _current["function"],
        "request_id": _current["request_id"],
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        **fields,
    }
    os.write(2, (json.dumps(line) + "\n").encode())


class _LineWriter(io.TextIOBase):
    def __init__(self, level: str) -> None:
        self._level = level
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            _emit(self._level, line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            _emit(self._level, self._pending)
            self._pending = ""


class _LogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit(record.levelname.lower(), self.format(record), logger_name=record.name)


def _capture_output() -> None:
    sys.stdout = _LineWriter("info")
    sys.stderr = _LineWriter("error")
    root = logging.getLogger()
    root.handlers[:] = [_LogHandler()]
    root.setLevel(logging.INFO)
