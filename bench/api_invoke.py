"""The Lambda API's cost, beside the Python client in the same run, on the same private Redis:

* synchronous Invoke latency (p50/p99) of a no-op handler on one worker process: boto3 through
  `headwater api` (SigV4 signed and verified) versus `broker.client.Client` straight to Redis, and
  the same Invoke pre-signed on a plain HTTP/1.1 connection (the API's cost without boto3's own);
* `Event` accepts per second: ONE `headwater api` process fed by concurrent signed HTTP clients,
  versus the Python client enqueueing one at a time (as `bench/async_invoke.py` measures it).

    python bench/api_invoke.py [--calls 500] [--events 3000] [--senders 16]

The worker is stopped before the `Event` runs, so both measure accepting only (Redis writes
included), not draining. The `Event` load is kept light so that it measures the API, not itself:
every request is signed with botocore's SigV4Auth (its own signature each, as an SDK makes them)
before the clock starts, then `--senders` keep-alive connections on one uvloop thread write the
raw HTTP/1.1 requests and read the answers. The signer's own cost per request is printed beside
(a client spends it, the API does not). The load shares the machine with the API process, as a
co-located client would.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3
import uvloop
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from broker.client import Client
from broker.config import load_config
from broker.embedded_redis import EmbeddedRedis
from broker.invocation import InvocationType

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


def sync_latency(client: Client, lambda_client: object, port: int, calls: int) -> None:
    """boto3 through the API against the Python client; and the same request pre-signed on a plain
    keep-alive connection, which separates the API's cost from boto3's own (request building,
    signing, response parsing: a client's cost, paid against Lambda too)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def direct() -> None:
        assert client.invoke("noop", {}, InvocationType.REQUEST_RESPONSE).status_code == 200

    def through_api() -> None:
        answer = lambda_client.invoke(FunctionName="noop", Payload=b"{}")  # type: ignore[attr-defined]
        answer["Payload"].read()
        assert answer["StatusCode"] == 200

    def pre_signed(raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        connection.request("POST", lines[0].split(" ")[1], body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200

    def plain_http() -> None:
        pre_signed(requests.pop())

    requests = [signed_event(port, "RequestResponse") for _ in range(calls + 50)]  # signed ahead, as in api_accepts
    timed(direct, 50), timed(through_api, 50), timed(plain_http, 50)  # warm: sandbox, connections, imports
    samples: dict[str, list[float]] = {"direct": [], "boto3": [], "plain": []}
    for _ in range(5):  # interleaved blocks, so a slow moment of the machine is shared by all
        samples["direct"] += timed(direct, calls // 5)
        samples["boto3"] += timed(through_api, calls // 5)
        samples["plain"] += timed(plain_http, calls // 5)
    connection.close()
    (direct_p50, direct_p99), (api_p50, api_p99), (plain_p50, plain_p99) = (
        percentiles(samples[name]) for name in ("direct", "boto3", "plain")
    )
    print(f"sync Invoke, no-op handler, {len(samples['boto3'])} calls each (ms):")
    print(f"  Python client                  p50 {direct_p50:6.2f}   p99 {direct_p99:6.2f}")
    added = api_p50 - direct_p50
    print(f"  boto3 via API                  p50 {api_p50:6.2f}   p99 {api_p99:6.2f}   (adds {added:+.2f} at p50)")
    added = plain_p50 - direct_p50
    print(f"  pre-signed HTTP/1.1 via API    p50 {plain_p50:6.2f}   p99 {plain_p99:6.2f}   (adds {added:+.2f} at p50)")


def signed_event(port: int, invocation_type: str = "Event") -> bytes:
    """One Invoke of `noop` as raw HTTP/1.1, signed by botocore as boto3 signs it."""
    path = "/2015-03-31/functions/noop/invocations"
    request = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}{path}", data=b"{}")
    request.headers["X-Amz-Invocation-Type"] = invocation_type
    SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", REGION).add_auth(request)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 2"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + b"{}"


async def send_all(port: int, requests: list[bytes]) -> list[str]:
    """Write each request on one keep-alive connection and read its answer; the unexpected statuses."""
    failures: list[str] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for raw in requests:
        writer.write(raw)
        status = (await reader.readline()).split(b" ", 2)[1]
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        if status != b"202":
            failures.append(status.decode())
    writer.close()
    return failures


def api_accepts(port: int, events: int, senders: int) -> tuple[float, float]:
    """Event accepts per second through the API, and botocore's signing time per request (µs)."""
    per_sender = events // senders
    started = time.perf_counter()
    requests = [signed_event(port) for _ in range(per_sender * senders)]  # each its own signature
    signing_us = (time.perf_counter() - started) / len(requests) * 1e6

    async def load() -> list[str]:
        shares = [requests[i * per_sender : (i + 1) * per_sender] for i in range(senders)]
        results = await asyncio.gather(*(send_all(port, share) for share in shares))
        return [failure for failures in results for failure in failures]

    started = time.perf_counter()
    failures = uvloop.run(load())
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} events refused, e.g. {failures[0]}")
    return per_sender * senders / elapsed, signing_us


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
        sync_latency(client, lambda_client, port, args.calls)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        direct = client_accepts(client, args.events)
        through_api, signing_us = api_accepts(port, args.events, args.senders)
        print(f"Event accepts/s, {args.events} events:")
        print(f"  Python client, one at a time             {direct:8,.0f}")
        ratio = through_api / direct
        print(f"  one API process, {args.senders} connections, pre-signed {through_api:8,.0f}   ({ratio:.2f}x)")
        print(f"  (botocore's SigV4 signing, client side: {signing_us:.0f} µs per request)")
    finally:
        for process in (api, worker):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        server.stop()


if __name__ == "__main__":
    main()
