"""The operator's `headwater` command, run as a real subprocess: quarantine, Redis errors, global options."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from redis import Redis

from broker import keys
from broker.connection import connect
from broker.invocation import Invocation, InvocationType
from broker.queue import InvocationQueue
from tests.rig import RedisServer
from tests.workers.conftest import REPO_ROOT, write_config

PASSWORD = "hunter2-not-for-logs"


def headwater(*arguments: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "broker.cli", *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False)


@pytest.fixture
def closed_port_url() -> Iterator[str]:
    """A Redis URL with a password on a loopback port that is bound but not listening: refused at once."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"redis://:{PASSWORD}@127.0.0.1:{bound.getsockname()[1]}/0"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "headwater.yaml", [{"FunctionName": "resize", "Handler": "tests.handlers.core.record"}]
    )


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = connect(redis_url)
    yield client
    client.close()


def poison_jobs(redis: Redis) -> dict[str, str]:
    """Two jobs the queue quarantines on claim, as a worker would meet them: data that is not rq's
    compressed form, and a job whose hash is gone. Returns {what: job id}."""
    queue = InvocationQueue(redis)
    ids = {
        what: queue.enqueue(Invocation("resize", "{}", InvocationType.EVENT, trigger="async"))
        for what in ("garbled", "missing")
    }
    redis.hset(keys.job(ids["garbled"]), "data", b"not zlib")
    redis.delete(keys.job(ids["missing"]))
    queue.heartbeat("cli-test", ["resize"])
    assert queue.claim("cli-test", ["resize"], max_jobs=10).claims == []
    assert len(queue.quarantined()) == 2
    return ids


def test_quarantine_list_shows_each_poison_job_with_its_reason(redis_url: str, redis: Redis) -> None:
    assert headwater("quarantine", "list", redis_url=redis_url).stdout == "no jobs in quarantine\n"
    ids = poison_jobs(redis)

    answer = headwater("quarantine", "list", "--output", "json", redis_url=redis_url)

    assert answer.returncode == 0, answer.stderr
    listed = {job["JobId"]: job for job in json.loads(answer.stdout)["QuarantinedJobs"]}
    assert set(listed) == set(ids.values())
    garbled, missing = listed[ids["garbled"]], listed[ids["missing"]]
    assert (garbled["FunctionName"], garbled["HasData"], missing["HasData"]) == ("resize", True, False)
    assert "compressed" in garbled["Reason"]
    assert missing["Reason"]
    assert abs(datetime.fromisoformat(garbled["QuarantinedAt"]).timestamp() - time.time()) < 60
    table = headwater("quarantine", "list", redis_url=redis_url).stdout.splitlines()
    assert table[0].split()[:3] == ["JOB", "ID", "FUNCTION"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert (rows[ids["garbled"]][1], rows[ids["garbled"]][3], rows[ids["missing"]][3]) == ("resize", "yes", "no")


def test_quarantine_requeue_puts_a_job_back_and_names_the_ones_it_could_not(redis_url: str, redis: Redis) -> None:
    ids = poison_jobs(redis)
    queue = InvocationQueue(redis)

    answer = headwater("quarantine", "requeue", ids["garbled"], "no-such-job", ids["missing"], redis_url=redis_url)

    assert answer.returncode == 1
    assert answer.stdout == f"requeued {ids['garbled']} (resize)\n"
    assert answer.stderr.splitlines() == [
        "headwater: not in quarantine: no-such-job",
        f"headwater: no data to requeue, drop it instead: {ids['missing']}",
    ]
    assert queue.job_pending("resize", ids["garbled"])
    assert queue.depth("resize") == 1
    assert [job.job_id for job in queue.quarantined()] == [ids["missing"]]


def test_quarantine_drop_all_forgets_every_quarantined_job(redis_url: str, redis: Redis) -> None:
    ids = poison_jobs(redis)

    answer = headwater("quarantine", "drop", "--all", redis_url=redis_url)

    assert answer.returncode == 0, answer.stderr
    assert sorted(answer.stdout.splitlines()) == sorted(f"dropped {job_id} (resize)" for job_id in ids.values())
    assert InvocationQueue(redis).quarantined() == []
    assert not redis.exists(keys.job(ids["garbled"]))
    assert headwater("quarantine", "drop", "--all", redis_url=redis_url).stdout == "no jobs in quarantine\n"


@pytest.mark.parametrize("arguments", [[], ["some-id", "--all"]], ids=["neither", "both"])
def test_quarantine_actions_want_job_ids_or_all(redis_url: str, arguments: list[str]) -> None:
    answer = headwater("quarantine", "requeue", *arguments, redis_url=redis_url)

    assert answer.returncode == 2
    assert answer.stderr.splitlines()[-1].endswith("give the JOB_IDs to act on, or --all (not both)")


@pytest.mark.parametrize(
    "arguments",
    [
        ["invoke", "resize", "--invocation-type", "Event"],
        ["mappings"],
        ["quarantine", "list"],
        ["quarantine", "requeue", "--all"],
        ["quarantine", "drop", "some-id"],
    ],
    ids=lambda arguments: "-".join(arguments[:2]),
)
def test_an_unreachable_redis_is_one_line_and_exit_2_without_the_password(
    closed_port_url: str, config_path: Path, arguments: list[str]
) -> None:
    config = ["--config", str(config_path)] if arguments[0] in ("invoke", "mappings") else []

    answer = headwater(*arguments, *config, redis_url=closed_port_url)

    assert answer.returncode == 2
    assert answer.stdout == ""
    shown = closed_port_url.replace(PASSWORD, "***")
    assert answer.stderr == (
        f"headwater: cannot reach Redis at {shown} (Connection refused); set HEADWATER_REDIS_URL or --redis-url\n"
    )


def test_redis_url_option_wins_over_the_environment_before_or_after_the_command(
    redis_url: str, closed_port_url: str, redis: Redis
) -> None:
    poison_jobs(redis)
    for arguments in (
        ["--redis-url", redis_url, "quarantine", "list"],
        ["quarantine", "list", "--redis-url", redis_url],
    ):
        answer = headwater(*arguments, "--output", "json", redis_url=closed_port_url)
        assert answer.returncode == 0, answer.stderr
        assert len(json.loads(answer.stdout)["QuarantinedJobs"]) == 2
    assert PASSWORD not in headwater("--redis-url", closed_port_url, "quarantine", "list", redis_url=redis_url).stderr


REFUSALS = {  # how to make Redis refuse writes, how to undo it, and what its refusal says
    "OOM": (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0"), "maxmemory"),
    "READONLY": (("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE"), "read only replica"),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_invoke_while_redis_refuses_writes_is_throttled(
    redis_server: RedisServer, redis_url: str, redis: Redis, config_path: Path, refusal: str
) -> None:
    refuse, restore, said = REFUSALS[refusal]
    redis_server.set_maxmemory(0)  # the policy a production Redis has: noeviction
    assert redis_server.command(*refuse) == b"+OK"
    try:
        invoke = ("invoke", "resize", "--config", str(config_path), "--invocation-type", "Event")
        answer = headwater(*invoke, redis_url=redis_url)
    finally:
        assert redis_server.command(*restore) == b"+OK"

    assert answer.returncode == 2
    assert answer.stderr.startswith("headwater: TooManyRequestsException: ")
    assert said in answer.stderr
    assert len(answer.stderr.splitlines()) == 1
    assert InvocationQueue(redis).depth("resize") == 0


def test_a_quarantine_action_while_redis_refuses_writes_is_one_line_and_changes_nothing(
    redis_server: RedisServer, redis_url: str, redis: Redis
) -> None:
    ids = poison_jobs(redis)
    redis_server.set_maxmemory(1)
    try:
        answer = headwater("quarantine", "requeue", "--all", redis_url=redis_url)
    finally:
        redis_server.set_maxmemory(0)

    assert answer.returncode == 2
    assert answer.stderr.startswith(f"headwater: Redis at {redis_url} refuses writes (")
    assert "maxmemory" in answer.stderr
    assert len(answer.stderr.splitlines()) == 1
    assert {job.job_id for job in InvocationQueue(redis).quarantined()} == set(ids.values())


def test_help_version_and_log_level(redis_url: str) -> None:
    described = headwater("--help", redis_url=redis_url)
    assert "Lambda-style Python handlers" in described.stdout
    assert "HEADWATER_REDIS_URL" in described.stdout
    assert headwater("--version", redis_url=redis_url).stdout.startswith("headwater ")

    wrong = headwater("quarantine", "list", "--log-level", "chatty", redis_url=redis_url)

    assert wrong.returncode == 2
    assert "Traceback" not in wrong.stderr
    assert "argument --log-level: invalid choice: 'CHATTY'" in wrong.stderr.splitlines()[-1]
    assert headwater("quarantine", "list", "--log-level", "debug", redis_url=redis_url).returncode == 0


def test_the_worker_command_comes_from_the_workers_package(redis_url: str, config_path: Path) -> None:
    """`worker` is contributed through the `headwater.commands` entry point, listed where it always was,
    and its own checks still fail as one line with exit code 2."""
    described = headwater("--help", redis_url=redis_url).stdout
    listed = [match[1] for match in re.finditer(r"^    ([a-z]+)\b", described, re.MULTILINE)]
    assert listed[:4] == ["validate", "invoke", "worker", "poll"]
    assert "--prefetch" in headwater("worker", "--help", redis_url=redis_url).stdout

    unknown = headwater("worker", "--config", str(config_path), "--functions", "resize,nope", redis_url=redis_url)

    assert unknown.returncode == 2
    assert unknown.stderr.splitlines() == ["headwater: ServiceException: --functions names unknown function(s): nope"]
