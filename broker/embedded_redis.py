"""A private redis-server for `headwater dev`: loopback only, append-only persistence on.

An accepted event lives only in Redis, so even the laptop stack runs with `appendfsync always`:
stopping and restarting it must not lose what was accepted.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.errors import HeadwaterError

START_TIMEOUT_SECONDS = 10.0


class EmbeddedRedis:
    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise HeadwaterError("redis-server is not installed: run `apt-get install -y redis-server` (Debian)")
        self.directory.mkdir(parents=True, exist_ok=True)
        arguments = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def _wait_ready(self) -> None:
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                client.ping()
            except RedisConnectionError:
                time.sleep(0.05)
            else:
                return
        raise HeadwaterError(
            f"redis-server did not start within {START_TIMEOUT_SECONDS:.0f} s; see {self.directory}/redis.log"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
