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
from collections.abc import Callable

from .common import INSTALL_COMMAND, LOOPBACK, ManagedProcess, RigError, Service, ServiceUnavailableError, free_port

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


class MotoServer(Service):
    """``python -m moto.server`` on a free loopback port; ``start()`` waits until its HTTP API answers."""

    name = "moto"

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        super().__init__(start_timeout=start_timeout)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``AWS_ENDPOINT_URL``/``endpoint_url=``."""
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        """Drop every resource moto holds (queues, functions, tables...)."""
        self._post("/moto-api/reset")

    def _prepare(self) -> Callable[[], ManagedProcess]:
        for module in ("moto.server", "flask", "werkzeug"):
            if importlib.util.find_spec(module) is None:
                raise ServiceUnavailableError(
                    f"moto server: Python module '{module}' is missing from "
                    f"{sys.executable}. Run {INSTALL_COMMAND} (it installs moto[server])."
                )
        if self._workdir is None:
            self._make_workdir()
        return self._spawn

    def _describe(self) -> str:
        return f"moto server on {LOOPBACK}:{self._port}"

    def _spawn(self) -> ManagedProcess:
        assert self._workdir is not None
        self._port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self._port)]
        process = ManagedProcess("moto", argv, self.log_path, cwd=self._workdir)
        process.start()
        return process

    def _post(self, path: str) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}{path}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RigError(f"moto POST {path} answered HTTP {response.status}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=1.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False
