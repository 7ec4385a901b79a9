"""The tumbling-window tests' handler: it keeps the ids of the records it was given in its window
state and records every invocation, whole, in Redis, so a test can check what each one received.

Everything goes to the Redis at REDIS_URL (the function's Environment.Variables), keyed by the
stream (`eventSourceARN`), which is new in every test:

- `windows:<arn>`: one JSON entry per invocation, in the order they ran: the event, the body ids,
  when it started;
- `window-attempts:<arn>`: deliveries per body id.

Body keys (besides `ns` and `id`): `stateless` (answer without `state` on the first N attempts of
this record), `block` (on its first attempt, wait until the test pushes to `release:<ns>`; pushes
to `started:<ns>` first), `big` (return a state over Lambda's 1 MB cap).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from typing import Any

from redis import Redis

BLOCK_LIMIT_SECONDS = 20
BIG_STATE_BYTES = 1_100_000


@functools.cache
def _redis() -> Redis:
    return Redis.from_url(os.environ["REDIS_URL"])


def handle(event: dict[str, Any], context: Any) -> Any:
    arn = event["eventSourceARN"]
    bodies = [json.loads(base64.b64decode(record["kinesis"]["data"])) for record in event["Records"]]
    attempts = [_redis().hincrby(f"window-attempts:{arn}", body["id"], 1) for body in bodies]
    entry = {"event": event, "ids": [body["id"] for body in bodies], "started": time.time()}
    _redis().rpush(f"windows:{arn}", json.dumps(entry))
    for body, attempt in zip(bodies, attempts, strict=True):
        if body.get("block") and attempt == 1:
            _redis().rpush(f"started:{body['ns']}", "1")
            _redis().blpop([f"release:{body['ns']}"], timeout=BLOCK_LIMIT_SECONDS)
    if any(attempt <= body.get("stateless", 0) for body, attempt in zip(bodies, attempts, strict=True)):
        return {"batchItemFailures": []}
    state = dict(event["state"])
    state["ids"] = [*state.get("ids", []), *(body["id"] for body in bodies)]
    if any(body.get("big") for body in bodies):
        state["padding"] = "x" * BIG_STATE_BYTES
    return {"state": state, "batchItemFailures": []}
