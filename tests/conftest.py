"""Real services shared by the whole test session (see tests/rig).

Only the service fixtures live here; feature fixtures go in sub-conftests.
A missing binary or jar fails the test with the install command: a test
suite that silently skips its integration tests proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.rig import (
    ElasticMQServer,
    KafkaBroker,
    MotoServer,
    RedisServer,
)
from tests.rig import aws_env as moto_aws_env
from tests.rig.common import start_or_fail
from tests.rig.redis_cluster import RedisClusterRig

_AMBIENT_AWS = frozenset({"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server (AOF on, fsync always). Tests may kill/restart it."""
    server = start_or_fail(RedisServer())
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis, emptied (FLUSHALL) for this test."""
    if not redis_server.running:  # an earlier test crashed it on purpose
        start_or_fail(redis_server)
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterRig]:
    """The session's 3-primary Redis Cluster (started by the first test that asks for it)."""
    cluster = start_or_fail(RedisClusterRig())
    yield cluster
    cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterRig) -> str:
    """`redis+cluster://` URL of the session cluster, every primary emptied for this test."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """The session's moto server (local AWS over HTTP)."""
    server = start_or_fail(MotoServer())
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
    broker = start_or_fail(KafkaBroker())
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def elasticmq_server() -> Iterator[ElasticMQServer]:
    """The session's ElasticMQ (SQS in memory, a few seconds to start), started on first use."""
    server = start_or_fail(ElasticMQServer())
    yield server
    server.close()
