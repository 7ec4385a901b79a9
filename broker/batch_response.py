"""Which records of a batch failed, from the function's result, as Lambda reads it.

Without `ReportBatchItemFailures` the answer is all or nothing. With it, an empty or null answer
(`""`, `null`, `{}`, `[]`, `{"batchItemFailures": []}` or `null`) is a full success; a list of
`{"itemIdentifier": ...}` fails those records; anything malformed, or an identifier that is not in
the batch, fails the whole batch. A function error or a throttle fails the whole batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from broker.invocation import Result, Status
from broker.sources.base import Batch


def plain_item_id(identifier: Any) -> str | None:
    """SQS and stream sources: the identifier is a non-empty string."""
    return identifier if isinstance(identifier, str) and identifier else None


def failed_items(
    result: Result,
    batch: Batch,
    reports_item_failures: bool,
    item_id_of: Callable[[Any], str | None] = plain_item_id,
) -> frozenset[str]:
    everything = frozenset(record.item_id for record in batch.records)
    if result.status is not Status.SUCCESS:
        return everything
    if not reports_item_failures:
        return frozenset()
    reported = _reported(result.payload, item_id_of)
    if reported is None or not reported <= everything:
        return everything
    return reported


def _reported(payload: str, item_id_of: Callable[[Any], str | None]) -> frozenset[str] | None:
    """The identifiers named as failed; None when the answer is malformed."""
    failures = _failure_list(payload)
    if failures is None:
        return None
    identifiers = [
        item_id_of(failure.get("itemIdentifier")) if isinstance(failure, dict) else None for failure in failures
    ]
    if any(identifier is None for identifier in identifiers):
        return None
    return frozenset(identifier for identifier in identifiers if identifier is not None)


def _failure_list(payload: str) -> list[Any] | None:
    """`batchItemFailures` as a list (empty for every form of "all succeeded"); None if malformed."""
    try:
        answer = json.loads(payload) if payload else None
    except ValueError:
        return None
    if answer in (None, "", {}, []):
        return []
    failures = answer.get("batchItemFailures") if isinstance(answer, dict) else "malformed"
    if failures is None:
        return []
    return failures if isinstance(failures, list) else None
