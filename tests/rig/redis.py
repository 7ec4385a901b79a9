"""A real ``redis-server`` for tests, with AOF durability like production.

Headwater's claim is that a Redis restart loses no accepted event, which only
holds with ``appendonly yes`` + ``appendfsync always``; the rig runs Redis that
way (RDB snapshots off) so tests exercise the same persistence path. The data
dir survives ``stop()``/``kill()`` so ``restart()`` replays the AOF on the same
port, which lets a test crash Redis and check what came back.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from .common import LOOPBACK, ManagedProcess, RigError, Service, find_executable, free_port


class RedisServer(Service):
    """One ``redis-server`` on a free loopback port, with a private data dir.

    ``start()`` replays the AOF if Redis ran before and waits for PING;
    ``stop()`` and ``kill()`` keep the data dir, ``close()`` deletes it and the log.
    """

    name = "redis"

    def __init__(self, *, binary: str = "redis-server", start_timeout: float = 15.0) -> None:
        super().__init__(start_timeout=start_timeout)
        self.binary = binary

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; stable across ``restart()``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self._started_workdir() / "data"

    def kill(self) -> None:
        """SIGKILL Redis, as a crash would; the data dir is kept."""
        if self._process is not None:
            self._process.kill()

    def restart(self) -> None:
        """Stop Redis if it runs, then start it on the same port and data dir."""
        self.stop()
        self.start()

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

    def _prepare(self) -> Callable[[], ManagedProcess]:
        executable = find_executable(self.binary, service="Redis", hint="it apt-installs redis-server")
        if self._workdir is None:
            self._make_workdir()
            self.data_dir.mkdir()
        # A restart must come back on the same port (clients hold the URL); only
        # a first start may pick another port after losing a bind race.
        first_start = self._port is None
        return lambda: self._spawn(executable, new_port=first_start)

    def _start_attempts(self) -> int:
        return 3 if self._port is None else 1  # see _prepare: a restart keeps its port

    def _describe(self) -> str:
        return f"Redis on {LOOPBACK}:{self._port}"

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

    def _ready(self) -> bool:
        # While replaying the AOF Redis answers "-LOADING ...", which is not ready.
        return self.command("PING", timeout=1.0) == b"+PONG"
