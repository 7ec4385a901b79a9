"""Run the API under uvicorn: one process, any number of replicas behind a Service.

`/metrics` and `/healthz` are served on `--metrics-port`, as by every Headwater daemon; healthy means
the event loop is turning and the process is not shutting down. SIGTERM stops taking connections and
lets requests in flight (a synchronous Invoke waits for its function) finish for `--grace-seconds`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import anyio
import uvicorn
from prometheus_client import REGISTRY

from broker import connection, metrics
from broker.api.access_keys import AccessKeys
from broker.api.app import LambdaApi
from broker.api.invoke import ApiClient
from broker.api.operation import ApiState
from broker.api.routes import OPERATIONS
from broker.config import config_file, load_config
from broker.errors import ConfigError
from broker.logs import get_logger
from broker.settings import variable

STALLED_AFTER_SECONDS = 10.0
log = get_logger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    config_path: str | None
    redis_url: str
    host: str = "0.0.0.0"  # noqa: S104 - a pod is reached from outside; bind --host to narrow it
    port: int = 8080
    keys_file: str | os.PathLike[str] | None = None
    no_auth: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None
    grace_seconds: float = 30.0
    invoke_threads: int = 64


def build(options: ServerOptions) -> LambdaApi:
    """The application for these options; a configuration or keys problem is a `ConfigError` now."""
    if options.no_auth == bool(options.keys_file):
        keys = f"--keys-file (or {variable('api_keys_file')})"
        raise ConfigError([f"give {keys}, or --no-auth for local use (not both)"])
    if bool(options.tls_cert) != bool(options.tls_key):
        raise ConfigError(["--tls-cert and --tls-key go together"])
    config_path = config_file(options.config_path)
    config = load_config(config_path)
    access_keys = AccessKeys(options.keys_file) if options.keys_file else None
    state = ApiState(
        config=config,
        client=ApiClient(config, options.redis_url),
        redis=connection.connect_async(options.redis_url),
        access_keys=access_keys,
        config_modified_at=config_path.stat().st_mtime,
        invoke_threads=anyio.CapacityLimiter(options.invoke_threads),
    )
    metrics.declare_functions((f.function_name, f.reserved_concurrent_executions) for f in config.functions)
    return LambdaApi(state, OPERATIONS)


def run(options: ServerOptions) -> None:
    app = build(options)
    if options.no_auth:
        log.warning("authentication is off (--no-auth): anyone who can reach this port can invoke every function")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            ssl_certfile=options.tls_cert,
            ssl_keyfile=options.tls_key,
            lifespan="on",
            loop="uvloop",  # uvicorn[standard] installs both; named so a missing one fails at start, not slows
            http="httptools",
            proxy_headers=False,  # nothing reads the client's address; skip the per-request middleware
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(options.grace_seconds),
        )
    )

    def healthy() -> bool:
        state = app.state
        return not state.stopping and time.monotonic() - state.alive_at < STALLED_AFTER_SECONDS

    metrics_server = (
        metrics.serve(options.metrics_port, REGISTRY, healthy) if options.metrics_port is not None else None
    )
    scheme = "https" if options.tls_cert else "http"
    log.info(
        "api listening",
        url=f"{scheme}://{options.host}:{options.port}",
        functions=len(app.state.config.functions),
        access_keys=len(app.state.access_keys) if app.state.access_keys else 0,
    )
    try:
        server.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
