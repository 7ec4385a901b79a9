"""Redis Sentinel on loopback: one primary, one replica, three Sentinels, failover in seconds.

``SentinelGroup`` is what a production Sentinel deployment looks like, shrunk to
one machine: the Sentinels agree (quorum 2) that the primary is down one second
after it stops answering (``down-after-milliseconds 1000``) and promote the
replica. ``fail_primary()`` SIGKILLs the primary and returns once every Sentinel
names the new one and it accepts writes, which takes a few seconds.

Data nodes are ``RedisServer``s (AOF, fsync always); Sentinels are
``SentinelServer``s, each with its own config file (Sentinel rewrites it as it
learns the topology). ``url()`` gives the ``redis+sentinel://`` URL that
``broker.connection.connect`` understands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from redis import Redis
from redis.exceptions import RedisError

from .common import (
    LOOPBACK,
    ClosedOnExit,
    ManagedProcess,
    RigError,
    Service,
    describe_log,
    find_executable,
    free_port,
)
from .redis import RedisServer, send_command

SERVICE_NAME = "headwater"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
_T = TypeVar("_T")
# A primary waits 5 s by default before it streams a full sync, in case more replicas come along;
# here one replica comes, so sync at once (either node may be the primary after a failover).
_DATA_NODE_ARGS = ["--repl-diskless-sync-delay", "0"]


class SentinelServer(Service):
    """One ``redis-sentinel`` watching ``service_name`` at ``primary_port``."""

    name = "sentinel"

    def __init__(
        self,
        primary_port: int,
        *,
        service_name: str = SERVICE_NAME,
        quorum: int = 2,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        data_password: str | None = None,
        password: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        self.primary_port = primary_port
        self.service_name = service_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_password = data_password
        self.password = password

    @property
    def config_path(self) -> Path:
        return self._started_workdir() / "sentinel.conf"

    def client(self) -> Redis:
        return Redis(LOOPBACK, self.port, password=self.password, socket_timeout=2, decode_responses=True)

    def primary_address(self) -> tuple[str, int] | None:
        """Where this Sentinel says the primary is (None if it cannot say)."""
        with self.client() as client:
            address = client.sentinel_get_master_addr_by_name(self.service_name)
        return (address[0], int(address[1])) if address else None

    def knows(self) -> dict[str, int]:
        """How many replicas and other Sentinels this Sentinel has discovered."""
        with self.client() as client:
            state = client.sentinel_master(self.service_name)
        return {"replicas": int(state["num-slaves"]), "sentinels": int(state["num-other-sentinels"])}

    def _prepare(self) -> Callable[[], ManagedProcess]:
        executable = find_executable("redis-sentinel", service="Redis Sentinel", hint="it apt-installs redis-sentinel")
        if self._workdir is None:
            self._make_workdir()
        first_start = self._port is None
        return lambda: self._spawn(executable, new_port=first_start)

    def _start_attempts(self) -> int:
        return 3 if self._port is None else 1  # a restarted Sentinel keeps its port: its peers know it

    def _spawn(self, executable: str, *, new_port: bool) -> ManagedProcess:
        if new_port:
            self._port = free_port()
            self.config_path.write_text(self._config())  # later starts keep what Sentinel rewrote
        process = ManagedProcess("redis-sentinel", [executable, str(self.config_path)], self.log_path)
        process.start()
        return process

    def _config(self) -> str:
        name = self.service_name
        lines = [
            f"port {self._port}",
            f"bind {LOOPBACK}",
            "daemonize no",
            'logfile ""',
            f"dir {self._started_workdir()}",
            f"sentinel monitor {name} {LOOPBACK} {self.primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.data_password is not None:
            lines.append(f"sentinel auth-pass {name} {self.data_password}")
        if self.password is not None:
            lines.append(f"requirepass {self.password}")  # peers authenticate with the same password
        return "\n".join(lines) + "\n"

    def _ready(self) -> bool:
        return send_command(self.port, "PING", password=self.password, timeout=1.0) == b"+PONG"

    def _describe(self) -> str:
        return f"Redis Sentinel on {LOOPBACK}:{self._port}"


class SentinelGroup(ClosedOnExit):
    """A primary, a replica and ``sentinels`` Sentinels (quorum ``quorum``), started and closed together.

    ``password`` protects the data nodes, ``sentinel_password`` the Sentinels,
    as in production setups that have both.
    """

    def __init__(
        self,
        *,
        sentinels: int = 3,
        quorum: int = 2,
        service_name: str = SERVICE_NAME,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.sentinel_count = sentinels
        self.quorum = quorum
        self.service_name = service_name
        self.password = password
        self.sentinel_password = sentinel_password
        self._stack = ExitStack()
        self.nodes: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []
        self.primary: RedisServer | None = None
        """The data node the Sentinels currently name as primary (after ``fail_primary()``, the promoted one)."""

    def start(self, timeout: float = 30.0) -> None:
        """Start the data nodes, wait for replication, start the Sentinels, wait until they see everything."""
        primary = self._stack.enter_context(RedisServer(password=self.password, extra_args=_DATA_NODE_ARGS))
        replica_args = [*_DATA_NODE_ARGS, "--replicaof", LOOPBACK, str(primary.port)]
        replica = self._stack.enter_context(RedisServer(password=self.password, extra_args=replica_args))
        self.nodes, self.primary = [primary, replica], primary
        self._wait(lambda: self._role(replica) == ("slave", "up"), "the replica to sync", timeout)
        for _ in range(self.sentinel_count):
            sentinel = SentinelServer(
                primary.port,
                service_name=self.service_name,
                quorum=self.quorum,
                data_password=self.password,
                password=self.sentinel_password,
            )
            self.sentinels.append(self._stack.enter_context(sentinel))
        # A failover needs a quorum that knows each other and a replica it can promote.
        expected = {"replicas": 1, "sentinels": self.sentinel_count - 1}
        self._wait(lambda: all(s.knows() == expected for s in self.sentinels), "the Sentinels to meet", timeout)

    def close(self) -> None:
        self._stack.close()
        self.nodes, self.sentinels, self.primary = [], [], None

    def url(self, db: int = 0) -> str:
        """``redis+sentinel://[:password@]host:port,.../service_name/db[?sentinel_password=...]``."""
        credentials = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        hosts = ",".join(f"{LOOPBACK}:{sentinel.port}" for sentinel in self.sentinels)
        query = f"?sentinel_password={quote(self.sentinel_password, safe='')}" if self.sentinel_password else ""
        return f"redis+sentinel://{credentials}{hosts}/{self.service_name}/{db}{query}"

    def fail_primary(self, timeout: float = 30.0) -> float:
        """SIGKILL the primary and wait until a replica is promoted; return how long that took (s).

        Done means: every Sentinel names the new primary and it reports ``role:master``.
        The killed node stays down (``restart_node`` brings it back as a replica): until then
        the primary has no replica, so durable mode (WAIT for 1 replica) refuses writes.
        """
        old = self._current_primary()
        started = time.monotonic()
        old.kill()
        candidates = [node for node in self.nodes if node is not old]

        def promoted() -> RedisServer | None:
            addresses = {sentinel.primary_address() for sentinel in self.sentinels}
            for node in candidates:
                if addresses == {(LOOPBACK, node.port)} and self._role(node)[0] == "master":
                    return node
            return None

        self.primary = self._wait(promoted, "a replica to be promoted", timeout)
        return time.monotonic() - started

    def restart_node(self, node: RedisServer, timeout: float = 30.0) -> float:
        """Start a killed data node again from its AOF as a replica of the current primary and wait
        until it is in sync; return how long that took (s).

        Like a Sentinel-aware init script (the usual Kubernetes charts have one), the node is told
        whom to follow as soon as it is up, instead of waiting up to 10 s for a Sentinel to notice
        a stale primary and demote it.
        """
        started = time.monotonic()
        node.start()
        primary = self._current_primary()
        reply = node.command("REPLICAOF", LOOPBACK, str(primary.port))
        if reply != b"+OK":
            raise RigError(f"REPLICAOF refused by Redis on port {node.port}: {reply!r}")
        self._wait(lambda: self._role(node) == ("slave", "up"), f"Redis on port {node.port} to sync", timeout)
        return time.monotonic() - started

    def _current_primary(self) -> RedisServer:
        if self.primary is None:
            raise RigError("SentinelGroup has not been started")
        return self.primary

    def _role(self, node: RedisServer) -> tuple[str, str]:
        """``("master", "")`` or ``("slave", link state)``, as ``INFO replication`` says; ``("", "")`` if unknown."""
        try:
            with Redis(LOOPBACK, node.port, password=self.password, socket_timeout=1, decode_responses=True) as client:
                info = client.info("replication")
        except RedisError:
            return "", ""
        return str(info["role"]), str(info.get("master_link_status", ""))

    def _wait(self, condition: Callable[[], _T | None], what: str, timeout: float) -> _T:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
            except (RedisError, OSError) as error:
                last_error, value = error, None
            if value:
                return value
            time.sleep(0.1)
        logs = "\n".join(describe_log(sentinel.log_path, lines=15) for sentinel in self.sentinels)
        raise RigError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})\n{logs}")
