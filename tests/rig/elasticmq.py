"""ElasticMQ: an in-memory, SQS-compatible server on the JVM, beside moto.

moto answers SQS's API but scans a whole queue for every send and receive, so it
cannot stand in for SQS under load, and it has its own ordering quirks. ElasticMQ
is a real message queue with SQS's semantics (visibility timeouts, receive counts,
redrive, FIFO groups, long polling), fast enough to benchmark against.
scripts/install-test-deps fetches its jars from Maven Central (see
tests/rig/elasticmq/pom.xml); this rig runs ``org.elasticmq.server.Main`` with the
machine's JDK, tuned small (serial GC, C1 only), queues in memory only.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

from .common import (
    INSTALL_COMMAND,
    LOOPBACK,
    ManagedProcess,
    PortInUseError,
    RigError,
    Service,
    ServiceUnavailableError,
    cache_dir,
    find_executable,
    free_port,
)
from .moto import FAKE_REGION

#: The account in the queue ARNs ElasticMQ reports (its own default).
ACCOUNT_ID = "000000000000"
_MAIN_CLASS = "org.elasticmq.server.Main"
_BIND_FAILED = "Address already in use"


def elasticmq_libs_dir() -> Path:
    """Dir of the server's jars, as laid out by scripts/install-test-deps."""
    return cache_dir() / "elasticmq-libs"


class ElasticMQServer(Service):
    """One ElasticMQ node on a free loopback port, queues in memory, in a private temp dir.

    ``stop()`` is a SIGKILL: ElasticMQ is known to ignore SIGTERM (1.7.1 here does exit on it,
    after a while), and with queues in memory there is nothing a clean shutdown would save.
    """

    name = "elasticmq"

    def __init__(
        self,
        libs_dir: Path | None = None,
        *,
        java: str = "java",
        heap: str = "256m",
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        self.libs_dir = libs_dir if libs_dir is not None else elasticmq_libs_dir()
        self.java = java
        self.heap = heap
        self._spawned: ManagedProcess | None = None  # the JVM being started, until it is ready

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``AWS_ENDPOINT_URL``/``endpoint_url=``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def version(self) -> str:
        """ElasticMQ version of the jars in ``libs_dir`` (e.g. ``"1.7.1"``)."""
        return self._server_jar().name.removeprefix("elasticmq-server_2.13-").removesuffix(".jar")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGKILL the server (see the class docstring); its temp dir is kept for ``start()``."""
        if self._process is not None:
            self._process.kill()

    def reset(self) -> None:
        """Delete every queue, so a test starts from an empty server (as ``MotoServer.reset``)."""
        for url in self.queue_urls():
            self._call("DeleteQueue", QueueUrl=url)

    def queue_urls(self) -> list[str]:
        """The URLs of every queue on the server (ListQueues pages through 1000 at most)."""
        urls: list[str] = []
        token = ""
        while True:
            answer = self._call("ListQueues", MaxResults="1000", **({"NextToken": token} if token else {}))
            urls += _elements(answer, "QueueUrl")
            tokens = _elements(answer, "NextToken")
            if not tokens:
                return urls
            token = tokens[0]

    # -- internals -----------------------------------------------------------------

    def _prepare(self) -> Callable[[], ManagedProcess]:
        java = find_executable(self.java, service="ElasticMQ", hint="it apt-installs a JDK if there is none")
        self._server_jar()  # fail early, with the install hint, if the jars are missing
        return lambda: self._spawn(java)

    def _describe(self) -> str:
        return f"ElasticMQ {self.version} on {LOOPBACK}:{self._port}"

    def _spawn(self, java: str) -> ManagedProcess:
        self._make_workdir()
        self._port = free_port()
        self._write_config()
        assert self._workdir is not None
        argv = [
            java,
            "-Xms32m", f"-Xmx{self.heap}",
            "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dconfig.file={self._workdir / 'elasticmq.conf'}",
            f"-Dlogback.configurationFile={self._workdir / 'logback.xml'}",
            "-cp", f"{self.libs_dir}/*",
            _MAIN_CLASS,
        ]  # fmt: skip
        process = ManagedProcess("elasticmq", argv, self.log_path, cwd=self._workdir)
        process.start()
        self._spawned = process
        return process

    def _write_config(self) -> None:
        """HOCON over the jar's defaults: bind loopback only, name queues by that address, AWS's region."""
        assert self._workdir is not None
        (self._workdir / "elasticmq.conf").write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = "http", host = "{LOOPBACK}", port = {self._port}, context-path = "" }}\n'
            f'rest-sqs {{ enabled = true, bind-port = {self._port}, bind-hostname = "{LOOPBACK}", '
            "sqs-limits = strict }\n"
            "rest-stats { enabled = false }\n"
            "queues-storage { enabled = false }\n"
            "messages-storage { enabled = false }\n"
            f'aws {{ region = "{FAKE_REGION}", accountId = "{ACCOUNT_ID}" }}\n'
        )
        # The jar's logback.xml logs every Pekko event at INFO; warnings and the startup line are enough.
        (self._workdir / "logback.xml").write_text(
            "<configuration>\n"
            '  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>\n"
            "  </appender>\n"
            '  <logger name="org.elasticmq.server" level="INFO"/>\n'
            '  <root level="WARN"><appender-ref ref="OUT"/></root>\n'
            "</configuration>\n"
        )

    def _server_jar(self) -> Path:
        jars = sorted(self.libs_dir.glob("elasticmq-server_2.13-*.jar"))
        if not jars:
            raise ServiceUnavailableError(
                f"ElasticMQ: no elasticmq-server_2.13-*.jar in {self.libs_dir}. Run {INSTALL_COMMAND} "
                "(it fetches the server from Maven Central with tests/rig/elasticmq/pom.xml)."
            )
        return jars[-1]

    def _call(self, action: str, **parameters: str) -> str:
        """One SQS query-protocol call; the XML answer as text."""
        form = urllib.parse.urlencode({"Action": action, **parameters}).encode()
        request = urllib.request.Request(self.endpoint_url + "/", data=form, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RigError(f"ElasticMQ {action} answered HTTP {exc.code}: {detail}") from None

    def _ready(self) -> bool:
        """ListQueues answers. A lost port race does not end the JVM (Pekko logs the failed bind
        and carries on), so the log is read for it: the process is killed and the rig retries."""
        if _BIND_FAILED in self.log_path.read_text(errors="replace"):
            if self._spawned is not None:
                self._spawned.kill()
            raise PortInUseError(f"ElasticMQ could not bind {LOOPBACK}:{self._port}: {_BIND_FAILED}")
        try:
            self._call("ListQueues")
        except RigError:
            return False
        return True


def _elements(xml: str, tag: str) -> list[str]:
    """Text of every ``<tag>`` element of a query-protocol answer, whatever its XML namespace."""
    nodes = ElementTree.fromstring(xml).iter()
    return [(node.text or "").strip() for node in nodes if node.tag.rpartition("}")[2] == tag]
