"""What the handler's process carries: Lambda's runtime contract (the handler module, the context
object, json) and nothing of Headwater's own machinery, when the worker runs as operators run it,
through the `headwater` console script."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.workers.conftest import REPO_ROOT, Stack

# What the worker needs and a handler does not: each would weigh on every warm sandbox.
WORKER_ONLY = {"redis", "pydantic", "pydantic_settings", "structlog", "rich", "prometheus_client", "yaml", "broker"}
SDKS = {"botocore", "boto3", "aiobotocore", "aiokafka"}


def test_the_handlers_process_loads_neither_the_workers_libraries_nor_its_arguments(
    make_stack: Callable[..., Stack], redis_url: str
) -> None:
    stack = make_stack([{"FunctionName": "loaded", "Handler": "tests.handlers.loaded.loaded"}])
    script = Path(sys.executable).with_name("headwater")  # the console script pip installed, as in production
    assert script.is_file(), f"{script} missing: install the project (pip install -e .)"
    command = [sys.executable, str(script), "--redis-url", redis_url, "worker", "--config", str(stack.config_path)]
    with (stack.directory / "pool-0.log").open("wb") as log:  # where `stack.logs()` reads; the pool keeps its copy
        pool = subprocess.Popen(command, cwd=REPO_ROOT, env=stack.env, stdout=log, stderr=subprocess.STDOUT)
    stack.pools.append(pool)
    stack.wait_for(lambda: stack.worker_pids(pool))

    seen = stack.client.invoke("loaded", {}).json()

    assert not set(seen["packages"]) & (WORKER_ONLY | SDKS)
    assert {"json", "workers"} <= set(seen["packages"])  # the runtime is there: the import above is not vacuous
    assert seen["argv"] == [str(script)]  # the program's name only: `--redis-url` may hold a password
