"""A real 3-primary Redis Cluster for tests: three ``redis-server --cluster-enabled yes`` joined by
``redis-cli --cluster create``.

Each node is a ``RedisServer`` (same AOF durability as the single-Redis rig) with its own cluster bus
port picked free too (``--cluster-port``: the default, port + 10000, may be taken or past 65535).
``start()`` returns once every node reports ``cluster_state:ok``, so a test's first command finds
every slot served. ``flushall()`` empties every primary (what the fixture does before each test).
"""

from __future__ import annotations

import subprocess
import time

from .common import LOOPBACK, ClosedOnExit, RigError, find_executable, free_ports
from .redis import RedisServer

PRIMARIES = 3
READY_TIMEOUT_SECONDS = 30.0


class RedisClusterRig(ClosedOnExit):
    """Three primaries, no replicas, every slot assigned; ``url`` is Headwater's ``redis+cluster://``."""

    def __init__(self) -> None:
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        if not self.nodes:
            raise RigError("RedisClusterRig has not been started")
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> None:
        if self.nodes and all(node.running for node in self.nodes):
            return
        cli = find_executable("redis-cli", service="Redis Cluster", hint="it apt-installs redis-tools")
        for bus_port in free_ports(PRIMARIES):
            node = RedisServer(
                extra_args=[
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-port", str(bus_port), "--cluster-node-timeout", "5000"),
                ]
            )
            self.nodes.append(node)
            node.start()
        create = [cli, "--cluster", "create", *(f"{LOOPBACK}:{port}" for port in self.ports)]
        joined = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if joined.returncode != 0:
            raise RigError(f"redis-cli --cluster create failed ({joined.returncode}):\n{joined.stdout}{joined.stderr}")
        self._wait_until_ok(cli)

    def _wait_until_ok(self, cli: str) -> None:
        """Every node agrees the cluster is up: all slots served (gossip takes a moment after create)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            states = [self._cluster_info(cli, port) for port in self.ports]
            if all("cluster_state:ok" in state for state in states):
                return
            if time.monotonic() > deadline:
                raise RigError(f"Redis Cluster not ok after {READY_TIMEOUT_SECONDS:.0f} s: {states}")
            time.sleep(0.1)

    @staticmethod
    def _cluster_info(cli: str, port: int) -> str:
        info = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10, check=False
        )
        return info.stdout

    def flushall(self) -> None:
        """Empty every primary (the slot map stays)."""
        for node in self.nodes:
            node.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes = []
