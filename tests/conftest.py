"""Real services shared by the whole test session (see tests/rig).

Only the service fixtures live here; feature fixtures go in sub-conftests.
A missing binary or jar fails the test with the install command: a test
suite that silently skips its integration tests proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.rig import (
    ElasticMQServer,
    KafkaBroker,
    MotoServer,
    RedisServer,
    RigError,
)
from tests.rig import aws_env as moto_aws_env

_AMBIENT_AWS = frozenset({"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})
_Service = TypeVar("_Service", RedisServer, MotoServer, KafkaBroker, ElasticMQServer)


def _start_or_fail(service: _Service) -> _Service:
    """Start ``service`` or fail (never skip) the requesting test with the rig's message.

    A missing binary/jar (ServiceUnavailableError) names ``scripts/install-test-deps``;
    a start failure quotes the service's log.
    """
    try:
        service.start()
    except RigError as exc:
        message = str(exc)  # fail outside the except block: no chained traceback
    else:
        return service
    service.close()
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server (AOF on, fsync always). Tests may kill/restart it."""
    server = _start_or_fail(RedisServer())
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis, emptied (FLUSHALL) for this test."""
    if not redis_server.running:  # an earlier test crashed it on purpose
        _start_or_fail(redis_server)
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """The session's moto server (local AWS over HTTP)."""
    server = _start_or_fail(MotoServer())
    yield server
    server.close()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Reset moto and point every AWS SDK in this test at it, via os.environ.

    Returns the variables set, for tests that pass them to child processes.
    Ambient credentials/profiles are removed so nothing can reach real AWS.
    """
    moto_server.reset()
    for name in list(os.environ):
        if name in _AMBIENT_AWS or name.startswith("AWS_ENDPOINT_URL_"):
            monkeypatch.delenv(name)
    env = moto_aws_env(moto_server.endpoint_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The session's single-node Kafka, started on first use (it costs a few seconds)."""
    broker = _start_or_fail(KafkaBroker())
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def elasticmq_server() -> Iterator[ElasticMQServer]:
    """The session's ElasticMQ (SQS in memory, a few seconds to start), started on first use."""
    server = _start_or_fail(ElasticMQServer())
    yield server
    server.close()
