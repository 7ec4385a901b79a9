"""Plumbing shared by the service rigs: ports, child processes, readiness, cleanup.

Every rig runs a real server as a child process bound to 127.0.0.1 on a port
picked at start time, with its files in a private temp dir, so several pytest
processes (or checkouts) can run side by side without colliding.

A rig's children must never outlive the test session, because an orphaned
Redis or JVM would hold memory on a 2-core CI box and could later be mistaken
for a live server. Three layers make sure of that:

* fixtures call ``close()`` in their finalizers (the normal path);
* an ``atexit`` hook SIGKILLs whatever is still registered and removes the
  temp dirs (pytest crashed or a fixture was bypassed);
* children started from the main thread are wrapped in ``setpriv --pdeathsig
  KILL`` so the kernel kills them if the Python process itself dies without
  running ``atexit`` (SIGKILL, pytest-timeout's ``os._exit``...). The kernel
  ties that signal to the *thread* that forked, so it is only used from the
  main thread, where session fixtures run; elsewhere ``atexit`` has to do.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, Self, TypeVar

import pytest

LOOPBACK = "127.0.0.1"
INSTALL_COMMAND = "scripts/install-test-deps"
_ADDRESS_IN_USE = "Address already in use"


class RigError(RuntimeError):
    """A rig could not provide its service."""


class Startable(Protocol):
    def start(self) -> None: ...
    def close(self) -> None: ...


StartableT = TypeVar("StartableT", bound=Startable)


def start_or_fail(service: StartableT) -> StartableT:
    """Start `service` or fail (never skip) the requesting test with the rig's message.

    A missing binary or jar (ServiceUnavailableError) names `scripts/install-test-deps`; a start
    failure quotes the service's log."""
    try:
        service.start()
    except RigError as exc:
        message = str(exc)  # fail outside the except block: no chained traceback
    else:
        return service
    service.close()
    pytest.fail(message, pytrace=False)


class ClosedOnExit:
    """`with rig:` starts it and closes it however the block ends (a failed start closes too)."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ServiceUnavailableError(RigError):
    """A binary, jar or Python module the service needs is not installed."""


class ServiceStartError(RigError):
    """The service was launched but died or never became ready."""


class PortInUseError(ServiceStartError):
    """The service died because its port was taken between picking and binding it."""


def cache_dir() -> Path:
    """Where scripts/install-test-deps keeps downloaded artifacts (Kafka's jars)."""
    configured = os.environ.get("HEADWATER_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "headwater"


def free_ports(count: int = 1) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago.

    All sockets stay open until every port is chosen so the kernel cannot hand
    out the same port twice. Another process may still grab one before the
    service binds it; rigs detect that (``PortInUseError``) and retry.
    """
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """Return one free loopback port (see ``free_ports``)."""
    return free_ports(1)[0]


def log_tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return f"(no log file at {path})"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


_ERROR_LINE = re.compile(r"\b(ERROR|FATAL)\b|\w(Exception|Error)\b")


def describe_log(path: Path, lines: int = 40) -> str:
    """Error-message text for a failed service: its first error line and its log tail.

    The first error is usually the cause (a JVM's config error comes long before
    the tail, which is full of shutdown noise), so it is quoted on its own.
    """
    tail = log_tail(path, lines)
    first_error = ""
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if _ERROR_LINE.search(line):
                first_error = line
                break
    cause = f"first error in log: {first_error}\n" if first_error and first_error not in tail else ""
    return f"{cause}--- last lines of {path} ---\n{tail}"


_lock = threading.Lock()
_live_processes: set[ManagedProcess] = set()
_workdirs: set[Path] = set()


def make_workdir(service: str) -> Path:
    """Create a private temp dir for one service instance; removed at exit at the latest."""
    path = Path(tempfile.mkdtemp(prefix=f"headwater-{service}-"))
    with _lock:
        _workdirs.add(path)
    return path


def remove_workdir(path: Path) -> None:
    """Delete a dir made by ``make_workdir``."""
    with _lock:
        _workdirs.discard(path)
    shutil.rmtree(path, ignore_errors=True)


_SETPRIV = shutil.which("setpriv")


class ManagedProcess:
    """One server child process with its output in a log file.

    The child gets its own session (process group) so signals reach any
    helper it forks (Redis' AOF rewrite child, for instance) and a Ctrl-C in
    the terminal reaches pytest first, which then tears fixtures down.
    """

    def __init__(
        self,
        service: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the child, appending its stdout and stderr to ``log_path``."""
        if self.running:
            raise RigError(f"{self.service} is already running (pid {self.pid})")
        argv = self.argv
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        with _lock:
            _live_processes.add(self)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is not gone in ``timeout`` s."""
        if self._popen is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self._popen.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL the process group at once (simulates a crash) and reap it."""
        if self._popen is None:
            return
        self._signal(signal.SIGKILL)
        self._popen.wait()
        self._forget()

    def describe_log(self) -> str:
        return describe_log(self.log_path)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group (fault injection: SIGSTOP/SIGCONT); no-op once it exited."""
        if self._popen is not None:
            self._signal(sig)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        if self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def _forget(self) -> None:
        with _lock:
            _live_processes.discard(self)


def wait_until(
    ready: Callable[[], bool],
    *,
    process: ManagedProcess,
    what: str,
    timeout: float,
) -> None:
    """Poll ``ready()`` until it returns True; fail fast if ``process`` dies.

    ``ready`` may raise ``OSError`` (connection refused, reset, timeout...),
    which counts as "not yet". ``what`` names the service in error messages,
    which also carry the tail of the service's log.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    delay = 0.02
    while True:
        if not process.running:
            log = process.describe_log()
            error = PortInUseError if _ADDRESS_IN_USE in log else ServiceStartError
            raise error(f"{what} exited with status {process.returncode} before it was ready.\n{log}")
        try:
            if ready():
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last check: {last_error!r})" if last_error else ""
            message = f"{what} was not ready after {timeout:.0f}s{detail}."
            raise ServiceStartError(f"{message}\n{process.describe_log()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def launch_until_ready(
    spawn: Callable[[], ManagedProcess],
    ready: Callable[[], bool],
    *,
    what: Callable[[], str],
    timeout: float,
    attempts: int = 3,
) -> ManagedProcess:
    """Run ``spawn()`` and wait for ``ready()``; on a lost port race, spawn again.

    ``spawn`` must pick fresh ports on every call (``what`` is re-read after it,
    so messages name the port in use). Any other failure kills the process and
    propagates.
    """
    for attempt in range(1, attempts + 1):
        process = spawn()
        try:
            wait_until(ready, process=process, what=what(), timeout=timeout)
        except PortInUseError:
            if attempt == attempts:
                raise
        except BaseException:
            process.kill()
            raise
        else:
            return process
    raise AssertionError("unreachable: attempts must be >= 1")


def find_executable(binary: str, *, service: str, hint: str) -> str:
    """Full path of ``binary`` on PATH, or ``ServiceUnavailableError`` with the install command.

    ``service`` names the service in the message; ``hint`` says what the install
    command does about it (e.g. "it apt-installs redis-server").
    """
    executable = shutil.which(binary)
    if executable is None:
        raise ServiceUnavailableError(f"{service}: '{binary}' is not on PATH. Run {INSTALL_COMMAND} ({hint}).")
    return executable


class Service(ClosedOnExit, abc.ABC):
    """Lifecycle shared by the rigs: a temp dir, a port and one server child process.

    ``start()`` does nothing if the server runs; otherwise it lets the subclass
    check what it needs and prepare its files (``_prepare``), then spawns the
    server and polls ``_ready()`` until it serves requests, spawning again on
    a lost port race (``launch_until_ready``). ``stop()`` keeps the temp dir,
    ``close()`` deletes it; as a context manager the service is started on
    entry and closed on exit. Properties that need a started service raise
    ``RigError("<ClassName> has not been started")`` before that.
    """

    #: Names the service's temp dir (``headwater-<name>-...``) and its log file (``<name>.log``).
    name: ClassVar[str]

    def __init__(self, *, start_timeout: float) -> None:
        self.start_timeout = start_timeout
        self._workdir: Path | None = None
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise self._not_started()
        return self._port

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self._started_workdir() / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> None:
        """Start the server unless it runs, and wait until it serves requests."""
        if self.running:
            return
        spawn = self._prepare()
        self._process = launch_until_ready(
            spawn,
            self._ready,
            what=self._describe,
            timeout=self.start_timeout,
            attempts=self._start_attempts(),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server (SIGKILL after ``timeout`` s); its temp dir is kept for ``start()``."""
        if self._process is not None:
            self._process.stop(timeout)

    def close(self) -> None:
        """Stop the server and delete its temp dir (data, config files and log)."""
        self.stop()
        self._remove_workdir()
        self._process = None

    # -- for subclasses ---------------------------------------------------------------

    @abc.abstractmethod
    def _prepare(self) -> Callable[[], ManagedProcess]:
        """Check what the server needs and set up its files; return what spawns it once.

        Raise ``ServiceUnavailableError`` (naming the service and the install
        command) if something is missing. The returned function is called again
        after a lost port race, so it must pick fresh ports if the server may move.
        """

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Whether the spawned server serves requests; ``OSError`` counts as "not yet"."""

    @abc.abstractmethod
    def _describe(self) -> str:
        """The server in start-error messages, with its address (e.g. "Redis on HOST:PORT")."""

    def _start_attempts(self) -> int:
        """How many times ``start()`` may spawn the server (every spawn after the first follows a lost port race)."""
        return 3

    def _not_started(self) -> RigError:
        return RigError(f"{type(self).__name__} has not been started")

    def _started_workdir(self) -> Path:
        if self._workdir is None:
            raise self._not_started()
        return self._workdir

    def _make_workdir(self) -> None:
        """Replace the temp dir (if any) with a new, empty one."""
        self._remove_workdir()
        self._workdir = make_workdir(self.name)

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            remove_workdir(self._workdir)
            self._workdir = None


@atexit.register
def _cleanup_at_exit() -> None:
    with _lock:
        processes = list(_live_processes)
        workdirs = list(_workdirs)
    for process in processes:
        process.kill()
    for path in workdirs:
        remove_workdir(path)
