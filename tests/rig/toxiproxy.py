"""Toxiproxy between the product and Redis: slow, cut and reset connections on demand.

``ToxiproxyServer`` runs Shopify's ``toxiproxy-server`` (built from the Go module
proxy by scripts/install-tools) on a free loopback port; ``ToxiproxyClient`` is a
small typed client over its HTTP API (stdlib ``urllib``, no extra dependency).

A proxy listens on its own loopback port and forwards to an upstream such as a
``RedisServer``; the product is given the proxy's address instead of Redis'. Then:

* a toxic changes what flows through it: ``Latency`` (each chunk delayed),
  ``Timeout`` (data stops; the connection is closed after ``timeout_ms``, or never
  with 0: a black hole), ``ResetPeer`` (every connection reset with a TCP RST);
* ``disable()`` closes every connection and refuses new ones (a partition in which
  the peer is known to be gone); ``enable()`` ends it on the same port.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .common import (
    INSTALL_COMMAND,
    LOOPBACK,
    ManagedProcess,
    RigError,
    Service,
    ServiceUnavailableError,
    cache_dir,
    free_port,
)

Stream = Literal["upstream", "downstream"]
"""Which way a toxic acts: ``downstream`` is server to client (Redis' replies), ``upstream`` the commands."""


class ToxiproxyError(RigError):
    """The Toxiproxy API refused a request (unknown proxy, duplicate name, bad attributes)."""


@dataclass(frozen=True)
class Toxic:
    """One toxic as the API takes it; subclasses name the type and carry its attributes."""

    type: ClassVar[str]
    name: str
    stream: Stream = "downstream"
    toxicity: float = 1.0
    """The fraction of connections affected (1.0: all)."""

    def attributes(self) -> dict[str, int]:
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": self.attributes(),
        }


@dataclass(frozen=True)
class Latency(Toxic):
    """Delays every chunk of data by ``latency_ms`` (plus or minus ``jitter_ms``)."""

    type: ClassVar[str] = "latency"
    latency_ms: int = 0
    jitter_ms: int = 0

    def attributes(self) -> dict[str, int]:
        return {"latency": self.latency_ms, "jitter": self.jitter_ms}


@dataclass(frozen=True)
class Timeout(Toxic):
    """Stops all data; closes the connection after ``timeout_ms``, or holds it silently forever with 0."""

    type: ClassVar[str] = "timeout"
    timeout_ms: int = 0

    def attributes(self) -> dict[str, int]:
        return {"timeout": self.timeout_ms}


@dataclass(frozen=True)
class ResetPeer(Toxic):
    """Resets each connection (TCP RST, "connection reset by peer") ``timeout_ms`` after it carries data."""

    type: ClassVar[str] = "reset_peer"
    timeout_ms: int = 0

    def attributes(self) -> dict[str, int]:
        return {"timeout": self.timeout_ms}


@dataclass(frozen=True)
class Proxy:
    """A proxy as the API describes it; ``port`` is where clients connect instead of the upstream."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def redis_url(self, db: int = 0) -> str:
        """The URL a Redis client uses to reach the upstream Redis through this proxy."""
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Proxy:
        return cls(
            name=body["name"],
            listen=body["listen"],
            upstream=body["upstream"],
            enabled=body["enabled"],
            toxics=[toxic["name"] for toxic in body.get("toxics") or []],
        )


class ToxiproxyClient:
    """The few calls of Toxiproxy's HTTP API the fault tests use."""

    def __init__(self, api_url: str, *, timeout_seconds: float = 5.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout_seconds = timeout_seconds

    def version(self) -> str:
        return str(self._request("GET", "/version", raw=True)).strip()

    def create_proxy(self, name: str, upstream: str, *, listen_port: int = 0) -> Proxy:
        """A proxy to ``upstream`` ("host:port") on ``listen_port`` (0: a free port Toxiproxy picks)."""
        body = {"name": name, "listen": f"{LOOPBACK}:{listen_port}", "upstream": upstream, "enabled": True}
        return Proxy.from_api(self._request("POST", "/proxies", body))

    def proxy(self, name: str) -> Proxy:
        return Proxy.from_api(self._request("GET", f"/proxies/{name}"))

    def disable(self, name: str) -> Proxy:
        """Cut the link: open connections are closed and new ones refused until ``enable()``."""
        return Proxy.from_api(self._request("POST", f"/proxies/{name}", {"enabled": False}))

    def enable(self, name: str) -> Proxy:
        """Restore the link, listening on the same port again."""
        return Proxy.from_api(self._request("POST", f"/proxies/{name}", {"enabled": True}))

    def add_toxic(self, proxy: str, toxic: Toxic) -> None:
        self._request("POST", f"/proxies/{proxy}/toxics", toxic.body())

    def remove_toxic(self, proxy: str, toxic_name: str) -> None:
        self._request("DELETE", f"/proxies/{proxy}/toxics/{toxic_name}", raw=True)

    @contextlib.contextmanager
    def toxic(self, proxy: str, toxic: Toxic) -> Iterator[None]:
        """The toxic is active inside the block and removed on the way out, whatever happened."""
        self.add_toxic(proxy, toxic)
        try:
            yield
        finally:
            self.remove_toxic(proxy, toxic.name)

    @contextlib.contextmanager
    def partitioned(self, proxy: str) -> Iterator[None]:
        """The proxy is disabled inside the block and enabled again on the way out."""
        self.disable(proxy)
        try:
            yield
        finally:
            self.enable(proxy)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._request("POST", "/reset", raw=True)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *, raw: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace").strip()
            raise ToxiproxyError(f"Toxiproxy {method} {path} answered {error.code}: {detail}") from None
        return text if raw else json.loads(text)


class ToxiproxyServer(Service):
    """One ``toxiproxy-server`` whose API listens on a free loopback port."""

    name = "toxiproxy"
    binary_name = "toxiproxy-server"

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        super().__init__(start_timeout=start_timeout)

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> ToxiproxyClient:
        return ToxiproxyClient(self.api_url)

    def _prepare(self) -> Callable[[], ManagedProcess]:
        executable = self._find_binary()
        if self._workdir is None:
            self._make_workdir()
        return lambda: self._spawn(executable)

    def _find_binary(self) -> str:
        """On PATH, else where scripts/install-tools puts it (HEADWATER_CACHE/bin)."""
        built = cache_dir() / "bin" / self.binary_name
        found = shutil.which(self.binary_name) or (str(built) if built.is_file() else None)
        if found is None:
            raise ServiceUnavailableError(
                f"Toxiproxy: '{self.binary_name}' is neither on PATH nor in {built.parent}. "
                f"Run {INSTALL_COMMAND} (it builds toxiproxy-server from the Go module proxy)."
            )
        return found

    def _spawn(self, executable: str) -> ManagedProcess:
        self._port = free_port()
        argv = [executable, "-host", LOOPBACK, "-port", str(self._port)]
        process = ManagedProcess(self.binary_name, argv, self.log_path)
        process.start()
        return process

    def _ready(self) -> bool:
        return bool(self.client().version())  # URLError (refused...) is an OSError: "not yet"

    def _describe(self) -> str:
        return f"Toxiproxy on {LOOPBACK}:{self._port}"
