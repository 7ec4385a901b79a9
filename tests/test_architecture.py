"""The architecture's boundaries, checked on the real code: the import-linter contracts in
pyproject.toml ([tool.importlinter]), and what `headwater validate` must leave unloaded.

CI runs pytest only, so this module is how the contracts run in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SDKS = ("aiokafka", "botocore", "aiobotocore", "aioboto3", "boto3")

# One mapping of every source kind and one destination of every kind: validating them resolves each
# kind, which must not need the kind's SDK.
EVERY_KIND = {
    "Functions": [
        {
            "FunctionName": "f",
            "Handler": "app.handler",
            "DeadLetterConfig": {"TargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq"},
            "EventInvokeConfig": {
                "DestinationConfig": {
                    "OnSuccess": {"Destination": "kafka://done"},
                    "OnFailure": {"Destination": "arn:aws:lambda:us-east-1:123456789012:function:g"},
                }
            },
        },
        {
            "FunctionName": "g",
            "Handler": "app.handler",
            "EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Destination": "redis-stream://failed"}}},
        },
    ],
    "EventSourceMappings": [
        {"FunctionName": "f", "EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:uploads"},
        {
            "FunctionName": "f",
            "EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
            "StartingPosition": "LATEST",
            "DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:kinesis-failed"}},
        },
        {
            "FunctionName": "f",
            "EventSourceArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-01-01T00:00:00.000",
            "StartingPosition": "TRIM_HORIZON",
        },
        {
            "FunctionName": "g",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["k:9092"]}},
            "Topics": ["orders"],
            "StartingPosition": "TRIM_HORIZON",
            "DestinationConfig": {"OnFailure": {"Destination": "kafka://orders-failed"}},
        },
    ],
}

VALIDATE_AND_LIST_MODULES = textwrap.dedent(
    """
    import contextlib, io, json, sys
    import broker.cli
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = broker.cli.main(["validate", "--config", sys.argv[1]])
    print(json.dumps({"code": code, "output": out.getvalue(), "modules": sorted(sys.modules)}))
    """
)


def test_the_import_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports")
    assert lint_imports is not None, "import-linter is not installed: pip install -e '.[test]'"
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def test_validate_loads_no_sdk_and_no_worker(tmp_path: Path) -> None:
    config = tmp_path / "headwater.yaml"
    config.write_text(yaml.safe_dump(EVERY_KIND))
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE_AND_LIST_MODULES, str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["code"] == 0, answer["output"]
    for kind in ("sqs→f", "kinesis→f", "dynamodb→f", "kafka→g"):
        assert kind in answer["output"]
    loaded = {module.split(".")[0] for module in answer["modules"]}
    assert not loaded & set(SDKS), sorted(module for module in answer["modules"] if module.split(".")[0] in SDKS)
    assert "workers.pool" not in answer["modules"]
