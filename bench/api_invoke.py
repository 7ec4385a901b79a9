"""The Lambda API's cost, beside the Python client in the same run, on the same private Redis:

* synchronous Invoke latency (p50/p99) of a no-op handler on one worker process: boto3 through
  `headwater api` (SigV4 signed and verified) versus `broker.client.Client` straight to Redis;
* `Event` accepts per second: ONE `headwater api` process fed by concurrent signed HTTP clients,
  versus the Python client enqueueing one at a time (as `bench/async_invoke.py` measures it).

    python bench/api_invoke.py [--calls 500] [--events 3000] [--senders 16]

The worker is stopped before the `Event` runs, so both measure accepting only (Redis writes
included), not draining. The HTTP senders are threads in this process, signing each request
with botocore; they share the machine with the API process, as a co-located client would.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from broker.client import Client
from broker.config import load_config
from broker.embedded_redis import EmbeddedRedis
from broker.model import InvocationType

KEY_ID, SECRET, REGION = "AKIDBENCHMARK0001", "bench/secret+key", "us-east-1"
CONFIG = "Functions:\n  - FunctionName: noop\n    Handler: examples.handlers.noop\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(directory: Path, redis_url: str, name: str, *arguments: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "HEADWATER_LOG_LEVEL": "WARNING"}
    log = (directory / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "broker.cli", *arguments, "--config", str(directory / "headwater.yaml")]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"nothing listens on {port}")


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def timed(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def sync_latency(client: Client, lambda_client: object, calls: int) -> None:
    def direct() -> None:
        assert client.invoke("noop", {}, InvocationType.REQUEST_RESPONSE).status_code == 200

    def through_api() -> None:
        answer = lambda_client.invoke(FunctionName="noop", Payload=b"{}")  # type: ignore[attr-defined]
        answer["Payload"].read()
        assert answer["StatusCode"] == 200

    timed(direct, 50), timed(through_api, 50)  # warm: sandbox, connections, imports
    direct_samples: list[float] = []
    api_samples: list[float] = []
    for _ in range(5):  # interleaved blocks, so a slow moment of the machine is shared by both
        direct_samples += timed(direct, calls // 5)
        api_samples += timed(through_api, calls // 5)
    (direct_p50, direct_p99), (api_p50, api_p99) = percentiles(direct_samples), percentiles(api_samples)
    print(f"sync Invoke, no-op handler, {len(api_samples)} calls each (ms):")
    print(f"  Python client        p50 {direct_p50:6.2f}   p99 {direct_p99:6.2f}")
    added = api_p50 - direct_p50
    print(f"  boto3 via API        p50 {api_p50:6.2f}   p99 {api_p99:6.2f}   (API adds {added:+.2f} at p50)")


def signed_event(port: int) -> tuple[str, dict[str, str]]:
    path = "/2015-03-31/functions/noop/invocations"
    request = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}{path}", data=b"{}")
    request.headers["X-Amz-Invocation-Type"] = "Event"
    SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", REGION).add_auth(request)
    return path, dict(request.headers.items())


def api_accepts(port: int, events: int, senders: int) -> float:
    per_sender = events // senders
    failures: list[str] = []

    def send() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(per_sender):
            path, headers = signed_event(port)  # a fresh signature per request, as an SDK makes
            connection.request("POST", path, body=b"{}", headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 202:
                failures.append(str(answer.status))
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} events refused, e.g. {failures[0]}")
    return per_sender * senders / elapsed


def client_accepts(client: Client, events: int) -> float:
    started = time.perf_counter()
    for _ in range(events):
        client.invoke("noop", {}, InvocationType.EVENT)
    return events / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--senders", type=int, default=16)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="headwater-api-bench-"))
    (directory / "headwater.yaml").write_text(CONFIG)
    (directory / "keys").write_text(f"{KEY_ID}:{SECRET}\n")
    server = EmbeddedRedis(directory / "redis", appendfsync="everysec")
    server.start()
    port = free_port()
    worker = start(directory, server.url, "worker", "worker", "--processes", "1")
    api = start(directory, server.url, "api", "api", "--port", str(port), "--keys-file", str(directory / "keys"))
    try:
        wait_for_port(port, api)
        client = Client(load_config(directory / "headwater.yaml"), server.url)
        lambda_client = boto3.client(
            "lambda",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=REGION,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=BotoConfig(retries={"total_max_attempts": 1}),
        )
        sync_latency(client, lambda_client, args.calls)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        direct = client_accepts(client, args.events)
        through_api = api_accepts(port, args.events, args.senders)
        print(f"Event accepts/s, {args.events} events:")
        print(f"  Python client, one at a time          {direct:8,.0f}")
        ratio = through_api / direct
        print(f"  one API process, {args.senders} signed HTTP senders {through_api:8,.0f}   ({ratio:.2f}x)")
    finally:
        for process in (api, worker):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        server.stop()


if __name__ == "__main__":
    main()
