"""Event source mappings managed through the API with boto3, run by a real `headwater poll` on moto SQS."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.runtime.conftest import FILE_MAPPING_UUID, RuntimeStack, function_arn
from tests.waiting import eventually

PICKED_UP_WITHIN = 15.0  # the poller checks the store every 2 s; starting an SQS source takes a moment
# A restarted poller's abandoned long poll may still take a message, visible again 5 s later.
DELIVERED_WITHIN = 15.0


def _bodies(runtime: RuntimeStack, function: str = "echo") -> list[str]:
    """The SQS message bodies the function was invoked with."""
    return [
        record["body"]
        for call in runtime.api.noted()
        if isinstance(call["event"], dict) and call["event"].get("Records")
        for record in call["event"]["Records"]
        if record.get("eventSource") == "aws:sqs"
    ]


async def _state(runtime: RuntimeStack, mapping_uuid: str, wanted: str) -> dict[str, Any]:
    client = runtime.api.client()

    def reached() -> dict[str, Any] | None:
        shown = client.get_event_source_mapping(UUID=mapping_uuid)
        return shown if shown["State"] == wanted else None

    return dict(
        await eventually(reached, PICKED_UP_WITHIN, lambda: f"{mapping_uuid} never {wanted}: {runtime.api.logs()}")
    )


async def test_a_mapping_created_through_the_api_is_polled_changed_and_deleted(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    url, arn = runtime.queue(f"orders-{uuid.uuid4().hex[:8]}")
    created = client.create_event_source_mapping(FunctionName="echo", EventSourceArn=arn, BatchSize=5)
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 202
    mapping_uuid = created["UUID"]
    assert (created["State"], created["StateTransitionReason"]) == ("Creating", "USER_INITIATED")
    assert created["FunctionArn"] == function_arn("echo")
    assert (
        created["EventSourceMappingArn"] == f"arn:aws:lambda:us-east-1:000000000000:event-source-mapping:{mapping_uuid}"
    )
    assert (created["BatchSize"], created["MaximumBatchingWindowInSeconds"]) == (5, 0)
    assert "LastProcessingResult" not in created  # SQS mappings have none, as on Lambda

    await _state(runtime, mapping_uuid, "Enabled")  # picked up without a restart
    runtime.sqs.send_message(QueueUrl=url, MessageBody="first")
    await eventually(lambda: "first" in _bodies(runtime), DELIVERED_WITHIN, runtime.api.logs)

    disabling = client.update_event_source_mapping(UUID=mapping_uuid, Enabled=False)
    assert (disabling["ResponseMetadata"]["HTTPStatusCode"], disabling["State"]) == (202, "Disabling")
    await _state(runtime, mapping_uuid, "Disabled")
    assert client.update_event_source_mapping(UUID=mapping_uuid, Enabled=True)["State"] == "Enabling"
    await _state(runtime, mapping_uuid, "Enabled")
    updating = client.update_event_source_mapping(UUID=mapping_uuid, BatchSize=3)
    assert (updating["State"], updating["BatchSize"]) == ("Updating", 3)
    assert (await _state(runtime, mapping_uuid, "Enabled"))["BatchSize"] == 3
    runtime.sqs.send_message(QueueUrl=url, MessageBody="second")
    await eventually(lambda: "second" in _bodies(runtime), DELIVERED_WITHIN, runtime.api.logs)

    deleted = client.delete_event_source_mapping(UUID=mapping_uuid)
    assert (deleted["ResponseMetadata"]["HTTPStatusCode"], deleted["State"]) == (202, "Deleting")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_event_source_mapping(UUID=mapping_uuid)
    # The poller forgets a mapping's state once its poller has stopped and settled everything.
    await eventually(lambda: not runtime.state(mapping_uuid), PICKED_UP_WITHIN, runtime.api.logs)
    runtime.sqs.send_message(QueueUrl=url, MessageBody="third")

    def received_here() -> list[str]:
        return [m["Body"] for m in runtime.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])]

    assert await eventually(received_here, DELIVERED_WITHIN + 20, runtime.api.logs) == ["third"]
    assert "third" not in _bodies(runtime)  # the message came back unprocessed: nothing polls for the handler


async def test_list_combines_the_file_and_the_store_with_filters_and_paging(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    arns = [runtime.queue(f"listed-{uuid.uuid4().hex[:8]}")[1] for _ in range(3)]
    created = [
        client.create_event_source_mapping(FunctionName="echo", EventSourceArn=arn, Enabled=False)["UUID"]
        for arn in arns
    ]
    try:
        pages = list(client.get_paginator("list_event_source_mappings").paginate(PaginationConfig={"PageSize": 2}))
        listed = [mapping["UUID"] for page in pages for mapping in page["EventSourceMappings"]]
        assert all(len(page["EventSourceMappings"]) <= 2 for page in pages)
        assert sorted(listed) == listed
        assert set(listed) >= {FILE_MAPPING_UUID, *created}
        by_function = client.list_event_source_mappings(FunctionName=function_arn("echo"))["EventSourceMappings"]
        assert {mapping["UUID"] for mapping in by_function} >= set(created)
        assert FILE_MAPPING_UUID not in {mapping["UUID"] for mapping in by_function}
        only = client.list_event_source_mappings(FunctionName="echo", EventSourceArn=arns[1])["EventSourceMappings"]
        assert [mapping["UUID"] for mapping in only] == [created[1]]
        filed = client.list_event_source_mappings(EventSourceArn=runtime.file_queue_arn)["EventSourceMappings"]
        assert [(m["UUID"], m["State"]) for m in filed] == [(FILE_MAPPING_UUID, "Disabled")]
        assert client.list_event_source_mappings(FunctionName="nobody")["EventSourceMappings"] == []
        with pytest.raises(ClientError) as raised:
            client.list_event_source_mappings(MaxItems=10001)
        assert raised.value.response["Error"]["Code"] == "ValidationException"
    finally:
        for mapping_uuid in created:
            client.delete_event_source_mapping(UUID=mapping_uuid)


async def test_refusals_are_lambdas_errors(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    _, arn = runtime.queue(f"refusals-{uuid.uuid4().hex[:8]}")
    missing = str(uuid.uuid4())
    for call in (client.get_event_source_mapping, client.delete_event_source_mapping):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            call(UUID=missing)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.update_event_source_mapping(UUID=missing, BatchSize=2)
    _refused(
        client, "InvalidParameterValueException", "Function does not exist", FunctionName="ghost", EventSourceArn=arn
    )
    _refused(client, "InvalidParameterValueException", "Unrecognized event source.", FunctionName="echo")
    _refused(
        client,
        "InvalidParameterValueException",
        "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10",
        FunctionName="echo",
        EventSourceArn=arn,
        BatchSize=100,
    )
    _refused(
        client,
        "InvalidParameterValueException",
        "Unsupported DestinationConfig parameter for given event source mapping type.",
        FunctionName="echo",
        EventSourceArn="arn:aws:kinesis:us-east-1:000000000000:stream/s",
        StartingPosition="LATEST",
        DestinationConfig={"OnSuccess": {"Destination": function_arn("echo")}},
    )
    _refused(
        client,
        "InvalidParameterValueException",
        "Value null at 'startingPosition' failed to satisfy constraint",
        FunctionName="echo",
        EventSourceArn="arn:aws:kinesis:us-east-1:000000000000:stream/s",
    )
    _refused(
        client,
        "ValidationException",
        "Value 'SOMEWHERE' at 'startingPosition' failed to satisfy constraint: Member must satisfy enum value set",
        FunctionName="echo",
        EventSourceArn="arn:aws:kinesis:us-east-1:000000000000:stream/s",
        StartingPosition="SOMEWHERE",
    )
    # The file's mappings: their identity is taken, and they change only in the file.
    _refused(
        client,
        "ResourceConflictException",
        FILE_MAPPING_UUID,
        FunctionName="filed",
        EventSourceArn=runtime.file_queue_arn,
    )
    with pytest.raises(client.exceptions.ResourceConflictException, match="configuration file"):
        client.update_event_source_mapping(UUID=FILE_MAPPING_UUID, BatchSize=2)
    with pytest.raises(client.exceptions.ResourceConflictException, match="configuration file"):
        client.delete_event_source_mapping(UUID=FILE_MAPPING_UUID)
    assert client.get_event_source_mapping(UUID=FILE_MAPPING_UUID)["State"] == "Disabled"


async def test_a_duplicate_and_an_update_while_creating_are_refused(runtime: RuntimeStack) -> None:
    """A Kafka cluster nobody listens on keeps its mapping `Creating` (the poller retries), so the
    update is refused deterministically."""
    client = runtime.api.client()
    unreachable = {
        "FunctionName": "echo",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9"]}},
        "Topics": [f"t-{uuid.uuid4().hex[:6]}"],
        "StartingPosition": "LATEST",
    }
    first = client.create_event_source_mapping(**unreachable)["UUID"]
    try:
        _refused(client, "ResourceConflictException", f"existing mapping with UUID {first}", **unreachable)
        await eventually(lambda: runtime.state(first).get("State") == "Creating", PICKED_UP_WITHIN, runtime.api.logs)
        with pytest.raises(client.exceptions.ResourceInUseException) as raised:
            client.update_event_source_mapping(UUID=first, BatchSize=5)
        assert (
            raised.value.response["Error"]["Message"] == "Cannot update the event source mapping because it is in use."
        )
    finally:
        client.delete_event_source_mapping(UUID=first)


def test_the_aws_cli_manages_mappings(runtime: RuntimeStack) -> None:
    _, arn = runtime.queue(f"cli-{uuid.uuid4().hex[:8]}")
    created = runtime.api.aws(
        "create-event-source-mapping", "--function-name", "echo", "--event-source-arn", arn, "--no-enabled"
    )
    mapping_uuid = json.loads(created.stdout)["UUID"]
    listed = runtime.api.client().list_event_source_mappings(EventSourceArn=arn)["EventSourceMappings"]
    assert [(mapping["UUID"], mapping["FunctionArn"]) for mapping in listed] == [(mapping_uuid, function_arn("echo"))]
    deleted = json.loads(runtime.api.aws("delete-event-source-mapping", "--uuid", mapping_uuid).stdout)
    assert deleted["State"] == "Deleting"
    assert runtime.api.client().list_event_source_mappings(EventSourceArn=arn)["EventSourceMappings"] == []


def _refused(client: Any, code: str, message: str, **request: Any) -> None:
    with pytest.raises(ClientError) as raised:
        client.create_event_source_mapping(**request)
    error = raised.value.response["Error"]
    assert error["Code"] == code, error
    assert message in error["Message"], error
    if code != "ValidationException":  # the one code botocore does not model
        assert isinstance(raised.value, getattr(client.exceptions, code))
