"""The handler the fault-injection suite deploys. It records every run in an append-only file
(RUNS_FILE, from the function's Environment.Variables), one fsynced line per phase, because the
suite kills, freezes and fills Redis itself: a record kept in Redis could vanish with the fault
under test, and the count of lost events would then be wrong.

Each line is JSON: `phase` ("start" or "end"), `ids` (the event's own id for an `Event`
invocation, the body ids of an SQS batch), `receive_counts` (SQS's ApproximateReceiveCount of
each record: above 1 means the message came back through the queue), `request_id` and `pid`.
Concurrent appends from many sandbox processes stay whole: each line is one `write` on an
O_APPEND descriptor.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any


def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Records its start, sleeps `seconds` (from the event, or from the first SQS body), records its end."""
    ids, seconds = _ids_and_seconds(event)
    counts = [record["attributes"]["ApproximateReceiveCount"] for record in event.get("Records", [])]  # SQS only
    _record("start", ids, counts, context)
    time.sleep(seconds)
    _record("end", ids, counts, context)
    return {"ids": ids}


def _ids_and_seconds(event: dict[str, Any]) -> tuple[list[str], float]:
    if event.get("eventSource") in ("SelfManagedKafka", "aws:kafka"):  # a Kafka batch: base64 JSON values
        values = [
            json.loads(base64.b64decode(record["value"])) for records in event["records"].values() for record in records
        ]
        return [str(value["id"]) for value in values], max(float(value.get("seconds", 0)) for value in values)
    if "Records" in event:
        bodies = [json.loads(record["body"]) for record in event["Records"]]
        return [str(body["id"]) for body in bodies], max(float(body.get("seconds", 0)) for body in bodies)
    return [str(event["id"])], float(event.get("seconds", 0))


def _record(phase: str, ids: list[str], receive_counts: list[str], context: Any) -> None:
    line = {"phase": phase, "ids": ids, "receive_counts": receive_counts, "request_id": context.aws_request_id,
            "pid": os.getpid(), "at": time.time()}  # fmt: skip
    descriptor = os.open(os.environ["RUNS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (json.dumps(line) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
