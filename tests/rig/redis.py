"""A real ``redis-server`` for tests, with AOF durability like production.

Headwater's claim is that a Redis restart loses no accepted event, which only
holds with ``appendonly yes`` + ``appendfsync always``; the rig runs Redis that
way (RDB snapshots off) so tests exercise the same persistence path. The data
dir survives ``stop()``/``kill()`` so ``restart()`` replays the AOF on the same
port, which lets a test crash Redis and check what came back.

Fault injection (tests/faults) drives the same server: ``freeze()``/``thaw()``
(SIGSTOP/SIGCONT: a Redis that hangs without closing connections), ``kill()``
then ``restart()`` (a crash and a replay of the AOF), ``set_maxmemory()`` (a
Redis that refuses writes with ``OOM``). ``extra_args`` adds server options,
e.g. ``--replicaof`` for the Sentinel rig's replica.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from .common import LOOPBACK, ManagedProcess, RigError, Service, find_executable, free_port


def send_command(port: int, *args: str, password: str | None = None, timeout: float = 5.0) -> bytes:
    """Send one command to the Redis (or Sentinel) on ``port``; return the first line of its reply.

    With ``password`` the connection authenticates first (``AUTH``); a refused
    ``AUTH`` is returned as the reply (``b"-WRONGPASS ..."``).
    """
    commands = [("AUTH", password), args] if password is not None else [args]
    request: list[bytes] = []
    for command in commands:
        request.append(f"*{len(command)}\r\n".encode())
        for arg in command:
            encoded = arg.encode()
            request.append(b"$%d\r\n%s\r\n" % (len(encoded), encoded))
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(b"".join(request))
        with sock.makefile("rb") as reply:
            if password is not None:
                authenticated = reply.readline().rstrip(b"\r\n")
                if authenticated != b"+OK":
                    return authenticated
            return reply.readline().rstrip(b"\r\n")


def reply_text(reply: bytes | str) -> str:
    """One redis-py reply as text. The tests' clients leave replies as bytes, but redis-py's types say
    `bytes | str` (a client made with `decode_responses=True` answers str), so the type checker needs this."""
    return reply.decode() if isinstance(reply, bytes) else reply


class RedisServer(Service):
    """One ``redis-server`` on a free loopback port, with a private data dir.

    ``start()`` replays the AOF if Redis ran before and waits for PING;
    ``stop()`` and ``kill()`` keep the data dir, ``close()`` deletes it and the log.
    """

    name = "redis"

    def __init__(
        self,
        *,
        binary: str = "redis-server",
        start_timeout: float = 15.0,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        self.binary = binary
        self.extra_args = list(extra_args)
        self.password = password
        """``requirepass`` (and ``masterauth``, so a replica can follow a primary with the same password)."""
        self._frozen = False

    @property
    def url(self) -> str:
        """``redis://[:PASSWORD@]127.0.0.1:PORT/0``; stable across ``restart()``."""
        credentials = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{credentials}{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self._started_workdir() / "data"

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` stopped the server and ``thaw()`` has not resumed it yet."""
        return self._frozen

    def freeze(self) -> None:
        """SIGSTOP Redis: connections stay open but nothing answers (a stalled host, a long fork)."""
        self._started_process().send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen Redis; it answers what queued up meanwhile."""
        self._started_process().send_signal(signal.SIGCONT)
        self._frozen = False

    def kill(self) -> None:
        """SIGKILL Redis, as a crash would; the data dir is kept."""
        if self._process is not None:
            self._process.kill()
        self._frozen = False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM Redis (thawed first, or it could not act on it); the data dir is kept."""
        if self._frozen and self.running:
            self.thaw()
        super().stop(timeout)
        self._frozen = False

    def restart(self) -> None:
        """Stop Redis if it runs, then start it on the same port and data dir (replaying its AOF)."""
        self.stop()
        self.start()

    def set_maxmemory(self, limit_bytes: int) -> None:
        """Cap Redis' memory with ``noeviction``: once used memory passes the cap, writes get ``-OOM``.

        Headwater must never lose an accepted event to eviction, so the policy is
        the one production needs; reads and deletes keep working. 0 lifts the cap.
        """
        for option, value in (("maxmemory-policy", "noeviction"), ("maxmemory", str(limit_bytes))):
            reply = self.command("CONFIG", "SET", option, value)
            if reply != b"+OK":
                raise RigError(f"Redis CONFIG SET {option} {value} failed: {reply!r}")

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command and return the first line of the reply (e.g. ``b"+OK"``).

        Enough for the rig's own PING/FLUSHALL without depending on a client
        library; tests should use redis-py against ``url``.
        """
        return send_command(self.port, *args, password=self.password, timeout=timeout)

    def flushall(self) -> None:
        """Empty every database (what the ``redis_url`` fixture does before each test)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RigError(f"Redis FLUSHALL failed: {reply!r}")

    def _started_process(self) -> ManagedProcess:
        if self._process is None or not self._process.running:
            raise RigError(f"Redis on {LOOPBACK}:{self._port} is not running")
        return self._process

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
            *(["--requirepass", self.password, "--masterauth", self.password] if self.password is not None else []),
            *self.extra_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        # While replaying the AOF Redis answers "-LOADING ...", which is not ready.
        return self.command("PING", timeout=1.0) == b"+PONG"
