"""Invoke requests refused before anything is enqueued: Lambda's limits and error codes."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from broker.client import Client
from broker.config import parse_config
from broker.errors import FunctionNotFound, InvalidRequestContent, RequestTooLarge
from broker.invocation import InvocationType
from tests.rig.redis import reply_text

CONFIG = parse_config({"Functions": [{"FunctionName": "f", "Handler": "tests.handlers.core.record"}]})


@pytest.fixture
def client(redis_url: str) -> Client:
    return Client(CONFIG, redis_url)


def nothing_enqueued(client: Client) -> bool:
    """No job, queue entry or scheduled retry exists (other keys, such as the heartbeats of a worker
    pool another suite keeps running on the shared Redis, are not this test's business)."""
    return not any(client.redis.scan_iter("rq:*")) and not any(client.redis.scan_iter("headwater:scheduled:*"))


def test_an_event_over_one_mebibyte_is_refused(client: Client) -> None:
    payload = json.dumps({"blob": "x" * (1_048_576 - 11)})
    assert len(payload) == 1_048_577
    with pytest.raises(RequestTooLarge) as refused:
        client.invoke("f", payload, InvocationType.EVENT)
    assert refused.value.status == 413
    assert refused.value.code == "RequestEntityTooLargeException"
    assert str(refused.value) == "1048577 byte payload is too large for the Event invocation type (limit 1048576 bytes)"
    assert nothing_enqueued(client)
    assert client.invoke("f", payload, InvocationType.DRY_RUN).status_code == 204  # within the 6 MB sync limit


def test_a_request_over_six_mebibytes_is_refused(client: Client) -> None:
    with pytest.raises(RequestTooLarge, match="Request must be smaller than 6291456 bytes"):
        client.invoke("f", json.dumps("x" * 6_291_456), InvocationType.REQUEST_RESPONSE)
    assert nothing_enqueued(client)


def test_a_payload_that_is_not_json_is_refused(client: Client) -> None:
    with pytest.raises(InvalidRequestContent, match="Could not parse request body into json"):
        client.invoke("f", "{not json", InvocationType.EVENT)
    assert nothing_enqueued(client)


def test_an_unknown_function_is_refused_with_its_arn(client: Client) -> None:
    with pytest.raises(FunctionNotFound) as refused:
        client.invoke("nope", {}, InvocationType.EVENT)
    assert refused.value.status == 404
    assert str(refused.value) == "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope:$LATEST"
    assert nothing_enqueued(client)


def test_an_accepted_event_is_stored_in_rq_json_job_form_and_nothing_else(client: Client) -> None:
    """The form the previous release read: a rolling upgrade may hand this job to one of its workers."""
    response = client.invoke("f", {"order": 1}, InvocationType.EVENT)
    assert response.status_code == 202
    [job_id] = client.redis.lrange("rq:queue:headwater.{f}", 0, -1)
    job = client.redis.hgetall("rq:job:" + reply_text(job_id))
    assert set(job) == {b"data"}
    data = job[b"data"]
    assert isinstance(data, bytes)
    handler, instance, [wire], kwargs = json.loads(zlib.decompress(data))
    assert (handler, instance, kwargs) == ("workers.invoke.run", None, {})
    assert wire["payload"] == '{"order": 1}'
    assert wire["request_id"] == response.request_id


def test_the_cli_reads_file_payloads_and_reports_errors_in_one_line(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("Functions:\n  - FunctionName: f\n    Handler: a.b\n")
    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    env = {"HEADWATER_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}

    def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *arguments, "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    done = cli("invoke", "f", "--payload", f"file://{event}", "--invocation-type", "Event")
    assert done.returncode == 0
    assert json.loads(done.stdout)["StatusCode"] == 202
    done = cli("invoke", "g", "--payload", "{}", "--invocation-type", "Event")
    assert done.returncode == 2
    arn = "arn:aws:lambda:us-east-1:000000000000:function:g:$LATEST"
    assert done.stderr.strip() == f"headwater: ResourceNotFoundException: Function not found: {arn}"
