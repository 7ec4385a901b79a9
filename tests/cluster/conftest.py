"""The core invocation tests on a real 3-primary Redis Cluster (tests/rig/redis_cluster.py): the same
`headwater worker` subprocesses and client as tests/workers, pointed at a `redis+cluster://` URL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.workers.conftest import Stack, stacks_on


@pytest.fixture
def make_cluster_stack(redis_cluster_url: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """`make_stack` on the session's cluster, emptied for this test; handlers report to it too."""
    yield from stacks_on(redis_cluster_url, tmp_path)
