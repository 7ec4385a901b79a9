"""The event source contract, run against DynamoDB Streams on moto's server: a fresh table per test,
one INSERT per record (the harness is `tests.dynamodb.conftest.DynamoDbHarness`)."""

from __future__ import annotations

import pytest

from tests.sources.contract import SourceContract

pytestmark = pytest.mark.timeout(60)


class TestDynamoDb(SourceContract):
    pass
