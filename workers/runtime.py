"""Warm execution environments: one sandbox process per function per worker, reused until it fails.

The INIT phase (importing the handler) happens once per environment and is counted as a cold
start. A timeout or a crash discards the environment, as Lambda does, and the next invocation of
that function starts a fresh one; discarding kills every process the handler started, too.

A sandbox's environment variables are built here, in layers where a later one wins:
1. Lambda's reserved variables (`AWS_LAMBDA_FUNCTION_NAME`, `AWS_REGION`, `_HANDLER`, ...), plus
   the few the operating system needs, taken from the worker: `PATH`, `LANG`, `LD_LIBRARY_PATH`,
   and `PYTHONPATH` (how the operator told Python where handler code lives, which a handler's own
   Python subprocesses need too; the sandbox's `sys.path` comes from the worker either way).
   `TZ` is `:UTC`, as on Lambda; `LAMBDA_TASK_ROOT` is the worker's working directory.
2. The operator's `Headwater.SandboxEnvironmentPassThrough` names, copied from the worker.
3. The function's `Environment.Variables`.
Nothing else of the worker's reaches the handler: not `HEADWATER_*`, not the Redis URL, not the
worker's AWS credentials, unless the operator passes them through by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from broker import metrics
from broker.config import Function
from broker.invocation import Invocation, Result, Status
from broker.logs import get_logger
from workers import sandbox
from workers.sandbox_process import SandboxProcess

POLL_SLICE_SECONDS = 0.25
LOG_TAIL_BYTES = 4096  # X-Amz-Log-Type: Tail: the last 4 KB of the run's log
INIT_TIMEOUT_SECONDS = 10.0  # Lambda's separate limit for the INIT phase (on-demand functions)
FROM_THE_WORKER = ("PATH", "LANG", "LD_LIBRARY_PATH", "PYTHONPATH")  # what the OS and Python need, no secrets
log = get_logger(__name__)


class AbortedError(Exception):
    """The worker was told to stop hard while this invocation ran; the job is handed back."""


class Environment:
    """One sandbox for one function; `invoke` enforces the timeout by killing the sandbox."""

    def __init__(
        self,
        function: Function,
        function_arn: str,
        context: ForkServerContext,
        worker_tag: str,
        pass_through: Sequence[str] = (),
    ) -> None:
        self.function = function
        self.function_arn = function_arn
        self._context = context
        self._worker_tag = worker_tag
        self._pass_through = pass_through
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None

    def invoke(self, invocation: Invocation, should_abort: Callable[[], bool]) -> Result:
        """Run once; with `tail_log` the Result carries the run's log as Lambda's Tail returns it."""
        started = time.perf_counter()
        result, handler_log, memory_used_mb = self._invoke(invocation, should_abort)
        if not invocation.tail_log:
            return result
        elapsed = result.duration_seconds or time.perf_counter() - started
        report = LogReport(invocation.request_id, elapsed, self.function.memory_size, memory_used_mb)
        return dataclasses.replace(result, log_tail=report.tail(handler_log or _error_line(result)))

    def _invoke(self, invocation: Invocation, should_abort: Callable[[], bool]) -> tuple[Result, str, int]:
        """The Result, the handler's log lines (Tail only) and the sandbox's peak memory in MB."""
        connection = self._warm_connection() or self._start()
        if isinstance(connection, Result):  # INIT failed or ran out of time: that is this invocation's result
            return dataclasses.replace(connection, request_id=invocation.request_id), "", 0
        deadline = time.time() + self.function.timeout
        request = {
            "request_id": invocation.request_id,
            "payload": invocation.payload,
            "deadline_ms": int(deadline * 1000),
            "client_context": invocation.client_context,
            "tail_log": invocation.tail_log,
        }
        connection.send_bytes(json.dumps(request).encode())
        while not connection.poll(min(POLL_SLICE_SECONDS, max(0.0, deadline - time.time()))):
            if should_abort():
                self.discard()
                raise AbortedError(invocation.request_id)
            if time.time() >= deadline:
                return self._timed_out(invocation), "", 0
        try:
            answer = json.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return self._exited(invocation), "", 0
        result = Result(
            request_id=invocation.request_id,
            status=Status(answer["status"]),
            payload=answer["payload"],
            error_type=answer["error_type"],
            duration_seconds=answer.get("duration_seconds", 0.0),
        )
        return result, str(answer.get("log", "")), int(answer.get("max_memory_used_mb", 0))

    def discard(self) -> None:
        """Kill the sandbox and every process it started; the next invocation starts (and counts) a cold start."""
        if self._process is not None:
            if self._process.pid is not None:
                sandbox.kill_process_tree(self._process.pid)
            self._process.join(timeout=5)
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    def _warm_connection(self) -> Connection | None:
        alive = self._process is not None and self._process.is_alive()
        return self._connection if alive else None

    def _start(self) -> Connection | Result:
        """A cold start: a new sandbox runs INIT (imports the handler) within its own time limit."""
        self.discard()
        module, attribute = self.function.module_and_attribute
        log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{self._worker_tag}"
        spec = {
            "function_name": self.function.function_name,
            "function_arn": self.function_arn,
            "memory_size": self.function.memory_size,
            "module": module,
            "attribute": attribute,
            "log_group_name": f"/aws/lambda/{self.function.function_name}",
            "log_stream_name": log_stream_name,
            "environment": self._environment_variables(log_stream_name),
            "worker_pid": os.getpid(),
        }
        parent, child = self._context.Pipe()
        process = SandboxProcess(target=sandbox.serve, args=(child, json.dumps(spec)), daemon=True)
        process.start()
        child.close()
        self._process, self._connection = process, parent
        metrics.COLD_STARTS.labels(self.function.function_name).inc()
        return self._await_init(parent)

    def _await_init(self, connection: Connection) -> Connection | Result:
        if not connection.poll(INIT_TIMEOUT_SECONDS):
            self.discard()
            message = f"INIT phase did not finish within {INIT_TIMEOUT_SECONDS:.2f} seconds"
            log.error(message)
            body = {"errorType": "Runtime.InitTimeout", "errorMessage": message}
            return Result("", Status.FUNCTION_ERROR, json.dumps(body), "Runtime.InitTimeout")
        try:
            answer = json.loads(connection.recv_bytes())
        except (EOFError, OSError):
            self.discard()
            body = {"errorType": "Runtime.ExitError", "errorMessage": "Runtime exited during INIT"}
            return Result("", Status.FUNCTION_ERROR, json.dumps(body), "Runtime.ExitError")
        if answer.get("status") == "ready":
            return connection
        self.discard()
        return Result("", Status.FUNCTION_ERROR, answer["payload"], answer["error_type"])

    def _environment_variables(self, log_stream_name: str) -> dict[str, str]:
        """The sandbox's whole environment (see the module docstring for the layers)."""
        name = self.function.function_name
        region = self.function_arn.split(":")[3]
        reserved = {
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.function.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
            "_HANDLER": self.function.handler,
            "LAMBDA_TASK_ROOT": os.getcwd(),
            "TZ": ":UTC",
        }
        inherited = {key: os.environ[key] for key in (*FROM_THE_WORKER, *self._pass_through) if key in os.environ}
        return {**reserved, **inherited, **self.function.environment.variables}

    def _timed_out(self, invocation: Invocation) -> Result:
        self.discard()
        seconds = f"{self.function.timeout:.2f}"
        log.error(f"Task timed out after {seconds} seconds")
        body = {
            "errorType": "Sandbox.Timedout",
            "errorMessage": f"RequestId: {invocation.request_id} Error: Task timed out after {seconds} seconds",
        }
        return Result(
            invocation.request_id, Status.FUNCTION_ERROR, json.dumps(body), "Sandbox.Timedout", self.function.timeout
        )

    def _exited(self, invocation: Invocation) -> Result:
        code = self._process.exitcode if self._process is not None else None
        self.discard()
        reason = (
            "Runtime exited without providing a reason"
            if not code
            else f"Runtime exited with error: exit status {code}"
        )
        log.error(reason)
        body = {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {invocation.request_id} Error: {reason}"}
        return Result(invocation.request_id, Status.FUNCTION_ERROR, json.dumps(body), "Runtime.ExitError")


@dataclass(frozen=True)
class LogReport:
    """Lambda's START / END / REPORT lines around a run's own log, cut to Tail's last 4 KB."""

    request_id: str
    duration_seconds: float
    memory_size_mb: int
    max_memory_used_mb: int

    def tail(self, handler_log: str) -> str:
        rid, milliseconds = self.request_id, self.duration_seconds * 1000
        text = (
            f"START RequestId: {rid} Version: $LATEST\n{handler_log}END RequestId: {rid}\n"
            f"REPORT RequestId: {rid}\tDuration: {milliseconds:.2f} ms\tBilled Duration: {math.ceil(milliseconds)} ms"
            f"\tMemory Size: {self.memory_size_mb} MB\tMax Memory Used: {self.max_memory_used_mb} MB\t\n"
        )
        return text.encode("utf-8", "surrogatepass")[-LOG_TAIL_BYTES:].decode("utf-8", "ignore")


def _error_line(result: Result) -> str:
    """What the runtime itself logs for a run cut short (timeout, crash, failed INIT)."""
    if result.status is Status.SUCCESS:
        return ""
    return f"{result.request_id} {result.error_message}\n" if result.error_message else ""


class Runtime:
    """All the warm environments of one worker process, created on first use."""

    def __init__(
        self, function_arn: Callable[[str], str], worker_tag: str, environment_pass_through: Sequence[str] = ()
    ) -> None:
        """`environment_pass_through`: names of the worker's variables every sandbox gets too
        (`Headwater.SandboxEnvironmentPassThrough`)."""
        self._function_arn = function_arn
        self._worker_tag = worker_tag
        self._pass_through = tuple(environment_pass_through)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["workers.sandbox"])
        self._environments: dict[str, Environment] = {}

    def invoke(self, function: Function, invocation: Invocation, should_abort: Callable[[], bool]) -> Result:
        environment = self._environments.get(function.function_name)
        if environment is None or environment.function != function:
            if environment is not None:
                environment.discard()
            arn = self._function_arn(function.function_name)
            environment = Environment(function, arn, self._context, self._worker_tag, self._pass_through)
            self._environments[function.function_name] = environment
        return environment.invoke(invocation, should_abort)

    def close(self) -> None:
        for environment in self._environments.values():
            environment.discard()
        self._environments.clear()
