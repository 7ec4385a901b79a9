"""`headwater dev`: the whole product on a laptop, with no outside service.

Starts a private Redis (append-only), a worker pool running the example functions, sends a few
invocations that show the main paths (a synchronous call, a success routed to its destination,
a failure walking through two retries into the dead-letter queue and the on-failure destination,
a timeout) and prints what happened. `--serve` keeps the stack up for your own invocations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.client import Client
from broker.config import Config, load_config
from broker.embedded_redis import EmbeddedRedis
from broker.invocation import InvocationType

if TYPE_CHECKING:
    from redis import Redis

STREAMS = {
    "succeeded": "headwater:dev:succeeded",
    "failed": "headwater:dev:failed",
    "dead-letters": "headwater:dev:dead-letters",
}
OUTCOME_TIMEOUT_SECONDS = 30.0


def run(keep_running: bool = False) -> int:
    config_path = Path(str(resources.files("examples") / "headwater.yaml"))
    config = load_config(config_path)
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="headwater-dev-")))
    redis.start()
    print(f"Redis (append-only) on {redis.url}")
    worker = _start_worker(config_path, redis.url)
    try:
        _demonstrate(config, redis.url)
        if keep_running:
            print(
                f"\nServing. In another shell: HEADWATER_REDIS_URL={redis.url} "
                f'headwater invoke hello --config {config_path} --payload \'{{"name": "you"}}\'  (Ctrl-C stops)'
            )
            worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        redis.stop()
    return 0


def _start_worker(config_path: Path, redis_url: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "HEADWATER_REDIS_URL": redis_url}
    command = [sys.executable, "-m", "broker.cli", "--log-level", "WARNING", "worker",
               "--config", str(config_path), "--processes", "2", "--grace-seconds", "10"]  # fmt: skip
    return subprocess.Popen(command, env=environment)


def _demonstrate(config: Config, redis_url: str) -> None:
    client = Client(config, redis_url)
    _show("RequestResponse hello", client.invoke("hello", {"name": "Headwater"}))
    _show("RequestResponse slow (Timeout 1 s, sleeps 2 s)", client.invoke("slow", {"seconds": 2}))
    _show(
        "Event hello (on success: a record to its destination)",
        client.invoke("hello", {"name": "async"}, InvocationType.EVENT),
    )
    failing = client.invoke("fail", {"order": 42}, InvocationType.EVENT)
    _show("Event fail (3 attempts, then dead-letter queue and on-failure destination)", failing)
    streams = _await_outcomes(client.redis)
    for label, entries in streams.items():
        for fields in entries:
            print(f"\n{label}:")
            print(json.dumps({k: _maybe_json(v) for k, v in fields.items()}, indent=2))


def _await_outcomes(redis: Redis) -> dict[str, list[dict[str, str]]]:
    deadline = time.monotonic() + OUTCOME_TIMEOUT_SECONDS
    found: dict[str, list[dict[str, str]]] = {}
    while time.monotonic() < deadline:
        found = {
            label: [_text_fields(fields) for _, fields in redis.xrange(key) or ()] for label, key in STREAMS.items()
        }
        if all(found.values()):
            break
        time.sleep(0.2)
    return found


def _text_fields(fields: Any) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in fields.items()}


def _show(title: str, response: Any) -> None:
    answer = {"StatusCode": response.status_code, "RequestId": response.request_id}
    if response.function_error:
        answer["FunctionError"] = response.function_error
    if response.payload is not None:
        answer["Payload"] = response.json()
    print(f"\n{title}:\n{json.dumps(answer, indent=2)}")


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
