"""The execution environment: a child process that imports one handler once and runs it many times.

Running the handler in its own process is what lets a timeout be enforced the way Lambda enforces
it: the environment is killed, whatever the handler is doing, and the next invocation starts a new
one (a cold start). It also keeps a crashing or leaking handler away from the worker's queue state.
Messages on the pipe are JSON bytes, never pickles. This module imports little on purpose: it
runs in every environment before the user's code.

The environment is the handler's own: `os.environ` holds only what the worker chose (Lambda's
reserved variables, the function's variables, the operator's pass-through list), never the worker's
settings or credentials. This keeps them out of libraries that read the environment and out of the
handler's child processes; it is not a wall against hostile code running under the worker's uid,
which can still read the worker's memory and `/proc`. The sandbox leads its own process group and
adopts orphaned descendants (a subreaper), so whatever the handler starts dies with the sandbox.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib
import io
import json
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from workers.context import ClientContext, LambdaContext, parse_client_context

RESPONSE_LIMIT_BYTES = 6_291_456  # Lambda's limit on a response, in bytes of its JSON text
LOG_EVENT_LIMIT_BYTES = 262_144  # CloudWatch Logs keeps at most 256 KB of one log event
LOG_TAIL_BYTES = 4096  # X-Amz-Log-Type: Tail returns the last 4 KB of an invocation's log
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_current = {"request_id": "", "function": ""}


def serve(connection: Connection, spec_json: str) -> None:
    """Entry point of the child: INIT once, then answer invocations until the pipe closes."""
    spec = json.loads(spec_json)
    _lead_own_process_group()
    _die_with_worker(spec["worker_pid"])
    _current["function"] = spec["function_name"]
    _replace_environment(spec["environment"])
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
        _tail.start(wanted=bool(request.get("tail_log")))
        outcome = _within_response_limit(_invoke(handler, spec, request))
        connection.send_bytes(json.dumps({**outcome, **_tail.finish()}).encode())


def _replace_environment(variables: dict[str, str]) -> None:
    """The forkserver handed us a copy of the worker's whole environment: drop all of it first."""
    os.environ.clear()
    os.environ.update(variables)
    time.tzset()  # TZ may have changed; C's localtime reads it only here


def _lead_own_process_group() -> None:
    """Lead a new session, so one `killpg` reaches every process the handler starts, and become a
    subreaper, so a descendant that leaves the group (setsid, a double fork) is still ours to find.
    The price: such an orphan that exits while the sandbox is warm stays a zombie until the sandbox
    is discarded (reaping it could steal the exit status of a child the handler waits for)."""
    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_process_tree(pid: int) -> None:
    """Kill a sandbox and everything it started. The sandbox is stopped first so it can neither fork
    nor reap while its descendants are listed (a reaped pid could be reused by a stranger)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
    _kill_descendants_and_group(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _kill_descendants_and_group(pid: int) -> None:
    for descendant in _descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(descendant, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the sandbox leads its group: the group's id is its pid


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (empty where /proc cannot be read)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])  # the name may hold spaces and ')'
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.extend(below)
        frontier.extend(below)
    return found


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
        _kill_descendants_and_group(os.getpid())  # the group includes this process
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
    started = time.perf_counter()
    try:
        event = json.loads(request["payload"])
        client_context = parse_client_context(request.get("client_context"))
    except (ValueError, RecursionError) as error:  # input that bypassed the Invoke checks (a source's record)
        outcome = _failure("Runtime.UnmarshalError", f"Unable to unmarshal input: {error}", request_id)
        _emit("error", f"[ERROR] Runtime.UnmarshalError: Unable to unmarshal input: {error}")
    else:
        outcome = _run(handler, event, _context(spec, request, client_context))
    outcome["duration_seconds"] = time.perf_counter() - started
    _current["request_id"] = ""
    return outcome


def _context(spec: dict[str, Any], request: dict[str, Any], client_context: ClientContext | None) -> LambdaContext:
    return LambdaContext(
        aws_request_id=request["request_id"],
        function_name=spec["function_name"],
        function_version="$LATEST",
        invoked_function_arn=spec["function_arn"],
        memory_limit_in_mb=str(spec["memory_size"]),
        log_group_name=spec["log_group_name"],
        log_stream_name=spec["log_stream_name"],
        deadline_epoch_ms=request["deadline_ms"],
        client_context=client_context,
    )


def _run(handler: Any, event: Any, context: LambdaContext) -> dict[str, Any]:
    request_id = context.aws_request_id
    try:
        value = handler(event, context)
    except Exception as error:  # a handler's exception is its result, not our failure
        outcome = _failure(type(error).__name__, str(error), request_id, _user_frames(error))
        _emit("error", f"[ERROR] {type(error).__name__}: {error}", stackTrace=outcome["stackTrace"])
        return outcome
    try:
        return {"status": "success", "payload": json.dumps(value), "error_type": None}
    except (TypeError, ValueError, RecursionError) as error:
        return _failure("Runtime.MarshalError", f"Unable to marshal response: {error}", request_id)


def _within_response_limit(outcome: dict[str, Any]) -> dict[str, Any]:
    """Lambda refuses a response over 6 MB. The message is AWS's verbatim, 6291556 included; whether
    AWS enforces that figure or 6291456 (its documented limit, which we enforce) is UNCONFIRMED, as is
    whether an error body that large is refused the same way (we refuse it: it would fill Redis)."""
    size = len(outcome["payload"].encode("utf-8", "surrogatepass"))
    if size <= RESPONSE_LIMIT_BYTES:
        return outcome
    message = "Response payload size exceeded maximum allowed payload size (6291556 bytes)."
    _emit("error", f"[ERROR] Function.ResponseSizeTooLarge: {message}", responseBytes=size)
    body = {"errorMessage": message, "errorType": "Function.ResponseSizeTooLarge"}
    return {**outcome, "status": "function_error", "payload": json.dumps(body), "error_type": body["errorType"]}


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
    """One log event; a message over Lambda's 256 KB is cut there and marked `truncated`."""
    encoded = message.encode("utf-8", "surrogatepass")
    if len(encoded) > LOG_EVENT_LIMIT_BYTES:
        message = encoded[:LOG_EVENT_LIMIT_BYTES].decode("utf-8", "ignore")  # never half a character
        fields["truncated"] = True
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
    if _tail.wanted:
        _tail.keep(line, logged="logger_name" in fields, stack=fields.get("stackTrace") or ())


class _TailBuffer:
    """X-Amz-Log-Type: Tail: the current invocation's lines in the text form Lambda's Python runtime
    writes (print output as is, `logging` records tab-separated with level, time and request id,
    errors with their traceback). Only about the last 4 KB are kept, so a chatty handler costs nothing."""

    def __init__(self) -> None:
        self.wanted = False
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0

    def start(self, wanted: bool) -> None:
        self.wanted = wanted
        self._lines.clear()
        self._size = 0

    def keep(self, line: dict[str, Any], logged: bool, stack: Sequence[str]) -> None:
        text = str(line["event"])
        if logged:
            text = f"[{str(line['level']).upper()}]\t{line['timestamp']}\t{line['request_id']}\t{text}"
        if stack:
            text += "\nTraceback (most recent call last):\n" + "".join(stack).rstrip("\n")
        self._lines.append(text + "\n")
        self._size += len(self._lines[-1])
        while len(self._lines) > 1 and self._size > LOG_TAIL_BYTES:
            self._size -= len(self._lines.popleft())

    def finish(self) -> dict[str, Any]:
        """The kept lines and the sandbox's peak memory (for REPORT); nothing when Tail was not asked."""
        if not self.wanted:
            return {}
        kept = "".join(self._lines)
        self.start(wanted=False)
        return {"log": kept, "max_memory_used_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


_tail = _TailBuffer()


class _LineWriter(io.TextIOBase):
    """Handler output, one log event per line. A line that outgrows the log limit before its newline
    is emitted (truncated) at once and the rest of it dropped, so memory stays bounded."""

    def __init__(self, level: str) -> None:
        self._level = level
        self._pending = ""
        self._dropping = False  # inside an over-long line already emitted

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if self._dropping:  # the tail of the over-long line
                self._dropping = False
                continue
            _emit(self._level, line)
        if not self._dropping and len(self._pending) > LOG_EVENT_LIMIT_BYTES:  # chars <= bytes: surely over
            _emit(self._level, self._pending)
            self._dropping = True
        if self._dropping:
            self._pending = ""
        return len(text)

    def flush(self) -> None:
        if self._pending and not self._dropping:
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
