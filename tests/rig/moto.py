"""moto in server mode: a local AWS (SQS, Lambda, DynamoDB...) over real HTTP.

Headwater talks to AWS through boto3/aioboto3 clients configured from the
environment, so the rig runs moto as a separate HTTP server rather than
patching botocore in-process: the code under test (and any worker process it
spawns) goes through its real client stack, endpoint resolution and retries,
and only ``AWS_ENDPOINT_URL`` points it here.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
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

FAKE_REGION = "us-east-1"


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment that sends every AWS SDK call to ``endpoint`` with throwaway credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": FAKE_REGION,
        "AWS_REGION": FAKE_REGION,
    }


class MotoServer:
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self._workdir: Path | None = None
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RigError("MotoServer has not been started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``AWS_ENDPOINT_URL``/``endpoint_url=``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> None:
        """Start moto and wait until its HTTP API answers."""
        if self.running:
            return
        for module in ("moto.server", "flask", "werkzeug"):
            if importlib.util.find_spec(module) is None:
                raise ServiceUnavailableError(
                    f"moto server: Python module '{module}' is missing from "
                    f"{sys.executable}. Run {INSTALL_COMMAND} (it installs moto[server])."
                )
        if self._workdir is None:
            self._workdir = make_workdir("moto")
        self._process = launch_until_ready(
            self._spawn,
            self._answers_http,
            what=lambda: f"moto server on {LOOPBACK}:{self._port}",
            timeout=self.start_timeout,
        )

    def reset(self) -> None:
        """Drop every resource moto holds (queues, functions, tables...)."""
        self._post("/moto-api/reset")

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            self._process.stop(timeout)

    def close(self) -> None:
        """Stop moto and delete its temp dir."""
        self.stop()
        if self._workdir is not None:
            remove_workdir(self._workdir)
            self._workdir = None
        self._process = None

    def __enter__(self) -> MotoServer:
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

    def _spawn(self) -> ManagedProcess:
        assert self._workdir is not None
        self._port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self._port)]
        process = ManagedProcess("moto", argv, self._workdir / "moto.log", cwd=self._workdir)
        process.start()
        return process

    def _post(self, path: str) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}{path}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RigError(f"moto POST {path} answered HTTP {response.status}")

    def _answers_http(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=1.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False
