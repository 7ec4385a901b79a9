"""kinesalite: a second, independent Kinesis implementation (Node.js, from the npm registry).

The Kinesis tests run on moto and on kinesalite, so the source is held to two readings of the
Kinesis API rather than one emulator's quirks (moto's split moves a parent's records into its
children and never closes the parent; kinesalite closes it and ends its iterator, as Kinesis
does). scripts/install-test-deps installs kinesalite under HEADWATER_CACHE/kinesalite; the rig
starts it bound to 127.0.0.1 with its in-memory store and no CREATING/DELETING/UPDATING delays.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .common import INSTALL_COMMAND, LOOPBACK, ManagedProcess, Service, ServiceUnavailableError, cache_dir, free_port

# kinesalite's CLI listens on every interface; this launcher binds it to loopback instead.
LAUNCHER = """
const kinesalite = require(process.argv[1]);
const server = kinesalite({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 1000});
server.listen(Number(process.argv[2]), process.argv[3], () => console.log('kinesalite listening'));
"""


def kinesalite_dir() -> Path:
    """Where scripts/install-test-deps installs the kinesalite package."""
    return cache_dir() / "kinesalite" / "node_modules" / "kinesalite"


class KinesaliteServer(Service):
    """kinesalite on a free loopback port; ``start()`` waits until it answers ListStreams."""

    name = "kinesalite"

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        super().__init__(start_timeout=start_timeout)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``AWS_ENDPOINT_URL_KINESIS``/``endpoint_url=``."""
        return f"http://{LOOPBACK}:{self.port}"

    def _prepare(self) -> Callable[[], ManagedProcess]:
        node = shutil.which("node")
        package = kinesalite_dir()
        if node is None or not (package / "index.js").is_file():
            raise ServiceUnavailableError(
                f"kinesalite: needs 'node' on PATH and the npm package in {package.parent}. "
                f"Run {INSTALL_COMMAND} (it installs kinesalite from the npm registry)."
            )
        if self._workdir is None:
            self._make_workdir()
        return lambda: self._spawn(node, package)

    def _describe(self) -> str:
        return f"kinesalite on {LOOPBACK}:{self._port}"

    def _spawn(self, node: str, package: Path) -> ManagedProcess:
        assert self._workdir is not None
        self._port = free_port()
        argv = [node, "-e", LAUNCHER, str(package), str(self._port), LOOPBACK]
        process = ManagedProcess("kinesalite", argv, self.log_path, cwd=self._workdir)
        process.start()
        return process

    def _ready(self) -> bool:
        request = urllib.request.Request(
            self.endpoint_url,
            data=b"{}",
            method="POST",
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "Kinesis_20131202.ListStreams",
                "X-Amz-Date": "20260101T000000Z",
                "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kinesis/aws4_request, "
                "SignedHeaders=host, Signature=0",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return "StreamNames" in json.loads(response.read())
        except urllib.error.HTTPError:
            return False
