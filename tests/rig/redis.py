"""A real ``redis-server`` for tests, with AOF durability like production.

Headwater's claim is that a Redis restart loses no accepted event, which only
holds with ``appendonly yes`` + ``appendfsync always``; the rig runs Redis that
way (RDB snapshots off) so tests exercise the same persistence path. The data
dir survives ``stop()``/``kill()`` so ``restart()`` replays the AOF on the same
port, which lets a test crash Redis and check what came back.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from types import TracebackType

from .common import (
    INSTALL_COMMAND,
    LOOPBACK,
    ManagedProcess,
    RigError,
    ServiceUnavailableError,
    free_port,
    launch_until_ready,
    make_workdir,
    remove_workdir,
)


class RedisServer:
    """One ``redis-server`` on a free loopback port, with a private data dir."""

    def __init__(self, *, binary: str = "redis-server", start_timeout: float = 15.0) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self._workdir: Path | None = None
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RigError("RedisServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; stable across ``restart()``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        if self._workdir is None:
            raise RigError("RedisServer has not been started")
        return self._workdir / "data"

    @property
    def log_path(self) -> Path:
        if self._workdir is None:
            raise RigError("RedisServer has not been started")
        return self._workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> None:
        """Start Redis (replaying the AOF if it ran before) and wait for PING."""
        if self.running:
            return
        executable = shutil.which(self.binary)
        if executable is None:
            raise ServiceUnavailableError(
                f"Redis: '{self.binary}' is not on PATH. Run {INSTALL_COMMAND} "
                "(it apt-installs redis-server)."
            )
        if self._workdir is None:
            self._workdir = make_workdir("redis")
            self.data_dir.mkdir()
        # A restart must come back on the same port (clients hold the URL); only
        # a first start may pick another port after losing a bind race.
        first_start = self._port is None
        self._process = launch_until_ready(
            lambda: self._spawn(executable, new_port=first_start),
            self._answers_ping,
            what=lambda: f"Redis on {LOOPBACK}:{self._port}",
            timeout=self.start_timeout,
            attempts=3 if first_start else 1,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Shut Redis down with SIGTERM; the data dir is kept for ``start()``."""
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL Redis, as a crash would; the data dir is kept."""
        if self._process is not None:
            self._process.kill()

    def restart(self) -> None:
        """Stop Redis if it runs, then start it on the same port and data dir."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop Redis and delete its data dir and log."""
        self.stop()
        if self._workdir is not None:
            remove_workdir(self._workdir)
            self._workdir = None
        self._process = None

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command and return the first line of the reply (e.g. ``b"+OK"``).

        Enough for the rig's own PING/FLUSHALL without depending on a client
        library; tests should use redis-py against ``url``.
        """
        request = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            encoded = arg.encode()
            request.append(b"$%d\r\n%s\r\n" % (len(encoded), encoded))
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            sock.sendall(b"".join(request))
            with sock.makefile("rb") as reply:
                return reply.readline().rstrip(b"\r\n")

    def flushall(self) -> None:
        """Empty every database (what the ``redis_url`` fixture does before each test)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RigError(f"Redis FLUSHALL failed: {reply!r}")

    def __enter__(self) -> RedisServer:
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

    def _spawn(self, executable: str, *, new_port: bool) -> ManagedProcess:
        if new_port:
            self._port = free_port()
        process = ManagedProcess("redis-server", self._argv(executable), self.log_path)
        process.start()
        return process

    def _argv(self, executable: str) -> list[str]:
        return [
            executable,
            "--bind", LOOPBACK,
            "--port", str(self._port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
        ]  # fmt: skip

    def _answers_ping(self) -> bool:
        # While replaying the AOF Redis answers "-LOADING ...", which is not ready.
        return self.command("PING", timeout=1.0) == b"+PONG"
