"""The event source contract, run against Kinesis on moto's server and on kinesalite: a fresh
one-shard stream per test; a lane is a partition key."""

from __future__ import annotations

import pytest

from tests.sources.contract import SourceContract

pytestmark = pytest.mark.timeout(60)


class TestKinesis(SourceContract):
    pass
