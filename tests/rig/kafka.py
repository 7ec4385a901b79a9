"""A single-node Apache Kafka (KRaft, broker+controller in one JVM) for tests.

Headwater's Kafka event source mapping must be tested against a real broker
(consumer groups, offset commits, rebalances), and there is no Docker here.
scripts/install-test-deps fetches the broker's jars from Maven Central (see
tests/rig/kafka/pom.xml); this rig formats a fresh log dir with Kafka's own
StorageTool and runs ``kafka.Kafka`` with the machine's JDK, tuned small
(one node, 3 partitions per topic, replication factor 1, serial GC, C1 only)
so it starts in a few seconds on 2 cores.
"""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from .common import (
    INSTALL_COMMAND,
    LOOPBACK,
    ManagedProcess,
    Service,
    ServiceStartError,
    ServiceUnavailableError,
    cache_dir,
    describe_log,
    find_executable,
    free_ports,
)

# Kafka 4.x keeps StorageTool in the Scala core jar under this name.
_STORAGE_TOOL = "kafka.tools.StorageTool"
_NODE_ID = 1


def kafka_libs_dir() -> Path:
    """Dir of the broker's jars, as laid out by scripts/install-test-deps."""
    return cache_dir() / "kafka-libs"


def random_cluster_id() -> str:
    """A cluster id in Kafka's format: a random UUID, base64url without padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka never issues those (CLI-unfriendly)
            return cluster_id


class KafkaBroker(Service):
    """One KRaft Kafka node on free loopback ports, in a private temp dir.

    Every ``start()`` formats a fresh log dir and waits until the broker serves
    metadata; ``stop()`` is a controlled shutdown, ``close()`` deletes the log dirs.
    """

    name = "kafka"

    def __init__(
        self,
        libs_dir: Path | None = None,
        *,
        java: str = "java",
        heap: str = "512m",
        start_timeout: float = 90.0,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        self.libs_dir = libs_dir if libs_dir is not None else kafka_libs_dir()
        self.java = java
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self.cluster_id = random_cluster_id()
        self._controller_port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT``, for aiokafka's ``bootstrap_servers=``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def version(self) -> str:
        """Kafka version of the jars in ``libs_dir`` (e.g. ``"4.1.1"``)."""
        return self._core_jar().name.removeprefix("kafka_2.13-").removesuffix(".jar")

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the broker down (SIGTERM: controlled shutdown, SIGKILL after ``timeout``)."""
        super().stop(timeout)

    # -- internals -----------------------------------------------------------------

    def _prepare(self) -> Callable[[], ManagedProcess]:
        java = find_executable(self.java, service="Kafka", hint="it apt-installs a JDK if there is none")
        self._core_jar()  # fail early, with the install hint, if the jars are missing
        return lambda: self._spawn(java)

    def _describe(self) -> str:
        return f"Kafka {self.version} broker on {self.bootstrap_servers}"

    def _spawn(self, java: str) -> ManagedProcess:
        """Fresh dir, ports, config and formatted storage, then the broker JVM."""
        self._make_workdir()
        self._port, self._controller_port = free_ports(2)
        self._write_config()
        self._format_storage(java)
        argv = self._java_argv(java, "kafka.Kafka", "server.properties")
        process = ManagedProcess("kafka", argv, self.log_path, cwd=self._workdir)
        process.start()
        return process

    def _core_jar(self) -> Path:
        jars = sorted(self.libs_dir.glob("kafka_2.13-*.jar"))
        if not jars:
            raise ServiceUnavailableError(
                f"Kafka: no kafka_2.13-*.jar in {self.libs_dir}. Run {INSTALL_COMMAND} "
                "(it fetches the broker from Maven Central with tests/rig/kafka/pom.xml)."
            )
        return jars[-1]

    def _write_config(self) -> None:
        assert self._workdir is not None
        broker = f"{LOOPBACK}:{self._port}"
        controller = f"{LOOPBACK}:{self._controller_port}"
        config = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            "controller.quorum.voters": f"{_NODE_ID}@{controller}",
            "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._workdir / "data"),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Fewer threads and buffers than the defaults: this box has 2 cores.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "group.coordinator.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            **self.extra_config,
        }
        lines = [f"{key}={value}" for key, value in config.items()]
        (self._workdir / "server.properties").write_text("\n".join(lines) + "\n")
        for level in ("INFO", "WARN"):
            (self._workdir / f"log4j2-{level.lower()}.properties").write_text(
                "appender.out.type = Console\n"
                "appender.out.name = OUT\n"
                "appender.out.layout.type = PatternLayout\n"
                "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
                f"rootLogger.level = {level}\n"
                "rootLogger.appenderRef.out.ref = OUT\n"
            )

    def _java_argv(self, java: str, main_class: str, *args: str, log_level: str = "info") -> list[str]:
        assert self._workdir is not None
        return [
            java,
            "-Xms64m", f"-Xmx{self.heap}",
            "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._workdir / f'log4j2-{log_level}.properties'}",
            "-cp", f"{self.libs_dir}/*",
            main_class, *args,
        ]  # fmt: skip

    def _format_storage(self, java: str) -> None:
        assert self._workdir is not None
        log = self._workdir / "format.log"
        argv = self._java_argv(
            java, _STORAGE_TOOL, "format", "-t", self.cluster_id, "-c", "server.properties",
            log_level="warn",
        )  # fmt: skip
        with log.open("wb") as out:
            try:
                result = subprocess.run(
                    argv, cwd=self._workdir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, timeout=120, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise ServiceStartError(
                    f"Kafka storage format timed out after {exc.timeout}s.\n{describe_log(log)}"
                ) from None
        if result.returncode != 0:
            message = f"Kafka storage format ({_STORAGE_TOOL}) exited with {result.returncode}."
            raise ServiceStartError(f"{message}\n{describe_log(log)}")

    def _ready(self) -> bool:
        brokers, controller_id = metadata(LOOPBACK, self.port, timeout=2.0)
        return controller_id >= 0 and (_NODE_ID, LOOPBACK, self.port) in brokers


def metadata(host: str, port: int, *, timeout: float) -> tuple[list[tuple[int, str, int]], int]:
    """Ask a broker for cluster metadata (no topics); return (brokers, controller id).

    A hand-rolled Metadata v4 request (the oldest version Kafka 4 accepts) so
    the readiness check needs no client library. A fenced or still-starting
    broker leaves itself out of the broker list, so seeing ourselves there
    means the node is registered with its controller and serving requests.
    """
    client_id = b"headwater-rig"
    header = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id  # Metadata, v4, corr 1
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        response = _recv_exactly(sock, size)
    try:
        return _parse_metadata_v4(response)
    except struct.error as exc:
        raise ConnectionError(f"malformed Metadata response from Kafka: {exc}") from None


def _parse_metadata_v4(response: bytes) -> tuple[list[tuple[int, str, int]], int]:
    offset = 8  # correlation id, throttle_time_ms
    (count,) = struct.unpack_from(">i", response, offset)
    offset += 4
    brokers: list[tuple[int, str, int]] = []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", response, offset)
        offset += 6
        broker_host = response[offset : offset + host_len].decode()
        offset += host_len
        broker_port, rack_len = struct.unpack_from(">ih", response, offset)
        offset += 6 + max(rack_len, 0)
        brokers.append((node_id, broker_host, broker_port))
    (cluster_id_len,) = struct.unpack_from(">h", response, offset)
    offset += 2 + max(cluster_id_len, 0)
    (controller_id,) = struct.unpack_from(">i", response, offset)
    return brokers, controller_id


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("Kafka closed the connection mid-response")
        chunks += chunk
    return bytes(chunks)
