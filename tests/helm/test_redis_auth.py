"""The embedded Redis's password, proven on a real redis-server started the way the chart starts it.

The StatefulSet's own shell command and redis.conf run here (paths moved into a temporary
directory, bound to 127.0.0.1): the password must reach redis-server through the included file,
be on no command line and in no environment of the server, and the HEADWATER_REDIS_URL the
worker pods get (with Kubernetes's $(VAR) expansion done the same way) must log in.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.connection import connect
from tests.helm.chart import RELEASE, containers, env_of, find, render
from tests.waiting import eventually

REDIS = f"{RELEASE}-headwater-redis"
PASSWORD = "s3cretPassw0rd-for.tests"  # a throwaway password for a throwaway server


def answers(client: redis.Redis) -> bool:
    """True once the server accepts the client's password (False while it is still starting)."""
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def chart_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    docs = render()
    conf = find(docs, "ConfigMap", REDIS)["data"]["redis.conf"]
    (script,) = containers(find(docs, "StatefulSet", REDIS))["redis"]["command"][2:]
    port = free_port()
    run_dir, data = tmp_path / "run", tmp_path / "data"
    run_dir.mkdir()
    data.mkdir()
    conf = (
        conf.replace("bind * -::*", "bind 127.0.0.1")
        .replace("port 6379", f"port {port}")
        .replace("dir /data", f"dir {data}")
        .replace("/run/redis/", f"{run_dir}/")
    )
    (tmp_path / "redis.conf").write_text(conf)
    script = script.replace("/run/redis/", f"{run_dir}/").replace("/etc/redis/redis.conf", str(tmp_path / "redis.conf"))
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": PASSWORD}
    process = subprocess.Popen(["sh", "-ec", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process, port, run_dir
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_password_reaches_redis_through_a_file_not_argv(
    chart_redis: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    process, port, run_dir = chart_redis
    # No client-side retries with backoff: eventually() polls.
    client = redis.Redis(port=port, password=PASSWORD, retry=Retry(NoBackoff(), 0))
    await eventually(lambda: answers(client), 15, lambda: "the chart's redis-server never answered")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="wrong", retry=Retry(NoBackoff(), 0)).ping()

    # The shell exec'd redis-server: this pid is the server itself.
    cmdline = proc_file(process.pid, "cmdline")
    assert b"redis-server" in cmdline
    assert PASSWORD.encode() not in cmdline
    assert PASSWORD.encode() not in proc_file(process.pid, "environ")
    auth_file = run_dir / "auth.conf"
    assert auth_file.stat().st_mode & 0o077 == 0  # umask 077: readable by Redis's user only
    assert PASSWORD in auth_file.read_text()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.close()


async def test_worker_url_logs_in_once_kubernetes_expands_it(
    chart_redis: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    _, port, _ = chart_redis
    env = env_of(containers(find(render(), "Deployment", f"{RELEASE}-headwater-worker"))["worker"])
    assert env["HEADWATER_REDIS_PASSWORD"]["secretKeyRef"]["name"] == f"{REDIS}-auth"
    # What the kubelet does with the Secret's value; then point the host at the local server.
    url = env["HEADWATER_REDIS_URL"].replace("$(HEADWATER_REDIS_PASSWORD)", PASSWORD)
    url = url.replace(f"{REDIS}.hw.svc:6379", f"127.0.0.1:{port}")
    client = connect(url, retry=Retry(NoBackoff(), 0))
    await eventually(lambda: answers(client), 15, lambda: "HEADWATER_REDIS_URL was refused")
    client.close()


def test_generated_secret_is_random_and_kept_on_uninstall() -> None:
    secrets = [find(render({"commonLabels": {"n": str(i)}}), "Secret", f"{REDIS}-auth") for i in range(2)]
    passwords = {s["data"]["redis-password"] for s in secrets}
    assert len(passwords) == 2  # a fresh one per install (an upgrade reads the live one back with lookup)
    for secret in secrets:
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    rendered = "\n".join(str(d) for d in render({"redis": {"auth": {"existingSecret": "mine"}}}))
    assert "Secret" not in {d["kind"] for d in render({"redis": {"auth": {"existingSecret": "mine"}}})}
    assert "requirepass" in rendered  # only the file-writing command, never a value
