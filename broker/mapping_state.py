"""The life of an event source mapping as Lambda reports it: State, reason, last result, last change.

The poller process writes each transition to Redis (`keys.mapping_state`), so `headwater mappings`
and any API can answer from another process; `describe` renders a mapping in Lambda's
EventSourceMappingConfiguration shape. Only the fields Lambda shows for the mapping's source are
included (an SQS mapping has no StartingPosition, no LastProcessingResult).
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from redis import Redis
from redis import asyncio as redis_async

from broker import keys, shard_leases
from broker.config import Config, load_config
from broker.invocation_records import function_arn
from broker.mapping import EventSourceMapping
from broker.mapping_store import MappingStore, combined
from broker.settings import get_settings
from broker.sources import runtime_for  # imports the source's running side on first use
from broker.sources.base import SOURCE_SPECIFIC_FIELDS, kind_of


class State(StrEnum):
    CREATING = "Creating"  # the poller process is connecting to the source and checking it
    ENABLED = "Enabled"  # polling
    DISABLING = "Disabling"  # no new reads; in-flight batches finish and settle
    DISABLED = "Disabled"  # not polling: turned off, or refused (the reason says why)


class ProcessingResult(StrEnum):
    NONE = "No records processed"
    OK = "OK"
    PROBLEM = "PROBLEM: Function call failed"
    # A record the source's client could not read (e.g. a Kafka header name that is not UTF-8) was
    # skipped; Lambda has no such value, the mapping must still say why records went missing.
    UNREADABLE_RECORD = "PROBLEM: Record could not be read and was skipped"


def user_action_reason(mapping: EventSourceMapping) -> str:
    source = runtime_for(mapping)
    return source.user_action_reason if source is not None else "User action"


class MappingStates:
    """Writes transitions of the mappings one poller process runs."""

    def __init__(self, redis: redis_async.Redis) -> None:
        self._redis = redis
        self._results: dict[str, str] = {}

    async def transition(self, mapping: EventSourceMapping, state: State, reason: str | None = None) -> None:
        fields = [
            "State", state.value,
            "StateTransitionReason", reason or user_action_reason(mapping),
            "LastModified", repr(time.time()),
        ]  # fmt: skip
        await self._redis.hset(keys.mapping_state(mapping.uuid), items=fields)

    async def processing_result(self, mapping: EventSourceMapping, result: ProcessingResult) -> None:
        """Record the outcome of the latest invocation; Redis is written only when it changes."""
        if self._results.get(mapping.uuid) != result.value:
            self._results[mapping.uuid] = result.value
            await self._redis.hset(keys.mapping_state(mapping.uuid), "LastProcessingResult", result.value)

    async def forget(self, mapping: EventSourceMapping) -> None:
        await self.forget_uuid(mapping.uuid)

    async def forget_uuid(self, uuid: str) -> None:
        """A mapping removed from the configuration is gone, as after DeleteEventSourceMapping."""
        self._results.pop(uuid, None)
        await self._redis.delete(keys.mapping_state(uuid))


def print_mappings(config_path: str | None, redis: Redis, as_json: bool) -> None:
    """`headwater mappings`: Lambda's ListEventSourceMappings answer, or a table of it (the file's
    mappings and those created through the API)."""
    config = with_stored_mappings(load_config(config_path), redis)
    described = [describe(m, config, stored, modified) for m, stored, modified in _stored(config_path, config, redis)]
    shards = {mapping.uuid: shard_leases.read_shards(redis, mapping.uuid) for mapping in config.event_source_mappings}
    if as_json:
        listed = {uuid: [_shard_row(view) for view in views] for uuid, views in shards.items() if views}
        print(json.dumps({"EventSourceMappings": described, **({"Shards": listed} if listed else {})}, indent=2))
        return
    print(f"{'UUID':36}  {'STATE':9}  {'FUNCTION':20}  EVENT SOURCE / REASON / LAST PROCESSING RESULT")
    for mapping, shown in zip(config.event_source_mappings, described, strict=True):
        print(f"{mapping.uuid:36}  {shown['State']:9}  {mapping.function_name:20}  {source_of(mapping)}")
        print(f"{'':36}  {'':9}  {'':20}  {shown['StateTransitionReason']}")
        if "LastProcessingResult" in shown:
            print(f"{'':36}  {'':9}  {'':20}  {shown['LastProcessingResult']}")
        for view in shards[mapping.uuid]:
            print(f"{'':36}  {'':9}  {'':20}  {_shard_line(view)}")


def with_stored_mappings(config: Config, redis: Redis) -> Config:
    """The file's configuration with the mappings created through the API, as the pollers run them."""
    return combined(config, MappingStore(redis).load())


def _shard_row(view: shard_leases.ShardView) -> dict[str, Any]:
    """A shard's lease in the JSON answer (Headwater's addition beside Lambda's mapping shape)."""
    return {
        "ShardId": view.shard_id,
        "Owner": view.owner,
        "Checkpoint": shard_leases.SHARD_END if view.ended else view.checkpoint,
        "IteratorAgeSeconds": view.iterator_age_seconds,
        "ParentShardIds": list(view.parents),
    }


def _shard_line(view: shard_leases.ShardView) -> str:
    """`shardId-000000000001  owner host-1a2b  checkpoint 4959...  iterator age 0.4 s`."""
    checkpoint = shard_leases.SHARD_END if view.ended else (view.checkpoint or "-")
    age = "-" if view.iterator_age_seconds is None else f"{view.iterator_age_seconds:.1f} s"
    return f"{view.shard_id}  owner {view.owner or '-'}  checkpoint {checkpoint}  iterator age {age}"


def mapping_status(config_path: str | None, config: Config, redis: Redis) -> list[dict[str, Any]]:
    """Each mapping's state for `headwater status`: how long it has been in it, and its last result."""
    config = with_stored_mappings(config, redis)
    now = time.time()
    rows = []
    for mapping, stored, modified in _stored(config_path, config, redis):
        shown = describe(mapping, config, stored, modified)
        rows.append(
            {
                "UUID": mapping.uuid,
                "FunctionName": mapping.function_name,
                "EventSource": source_of(mapping),
                "State": shown["State"],
                "StateTransitionReason": shown["StateTransitionReason"],
                "SecondsInState": round(max(0.0, now - shown["LastModified"]), 1),
                "LastProcessingResult": shown.get("LastProcessingResult"),
            }
        )
    return rows


def source_of(mapping: EventSourceMapping) -> str:
    """What a mapping reads: its source's ARN, or a self-managed Kafka mapping's topics."""
    return mapping.event_source_arn or ",".join(mapping.topics or [])


def _stored(
    config_path: str | None, config: Config, redis: Redis
) -> list[tuple[EventSourceMapping, dict[str, str], float]]:
    """Each mapping with its Redis record and the configuration file's time (LastModified until a
    poller has written one)."""
    path = config_path or get_settings().config
    modified = Path(path).stat().st_mtime if path else time.time()
    stored = read_states(redis, config)
    return [(mapping, stored[mapping.uuid], modified) for mapping in config.event_source_mappings]


def read_states(redis: Redis, config: Config) -> dict[str, dict[str, str]]:
    pipe = redis.pipeline(transaction=False)
    for mapping in config.event_source_mappings:
        pipe.hgetall(keys.mapping_state(mapping.uuid))
    answers = pipe.execute()
    return {
        mapping.uuid: {key.decode(): value.decode() for key, value in answer.items()}
        for mapping, answer in zip(config.event_source_mappings, answers, strict=True)
    }


def describe(mapping: EventSourceMapping, config: Config, stored: dict[str, str], modified: float) -> dict[str, Any]:
    """Lambda's EventSourceMappingConfiguration for a mapping; `stored` is its Redis record, if any.

    A mapping no poller has picked up yet is `Creating` (or `Disabled` when turned off); then
    `modified` (the configuration file's time) stands in for LastModified.
    """
    settings = config.headwater
    shown = _shown_fields(mapping)
    answer: dict[str, Any] = {
        "UUID": mapping.uuid,
        "EventSourceMappingArn": f"arn:aws:lambda:{settings.region}:{settings.account_id}:"
        f"event-source-mapping:{mapping.uuid}",
        "FunctionArn": function_arn(settings.region, settings.account_id, mapping.function_name, None),
        **mapping.model_dump(by_alias=True, include=shown, exclude_none=True),
        "LastModified": float(stored.get("LastModified", modified)),
        "State": stored.get("State", State.CREATING.value if mapping.enabled else State.DISABLED.value),
        "StateTransitionReason": stored.get("StateTransitionReason", user_action_reason(mapping)),
    }
    source = runtime_for(mapping)
    if source is None or source.reports_processing_result:
        answer["LastProcessingResult"] = stored.get("LastProcessingResult", ProcessingResult.NONE.value)
    return dict(sorted(answer.items()))


def _shown_fields(mapping: EventSourceMapping) -> set[str]:
    """Every field that applies to the mapping's source, minus the ones Lambda leaves out when unset."""
    not_applicable = SOURCE_SPECIFIC_FIELDS - kind_of(mapping).accepts
    shown = set(type(mapping).model_fields) - not_applicable - {"function_name", "enabled", "uuid"}
    if mapping.scaling_config.maximum_concurrency is None:
        shown.discard("scaling_config")
    if not mapping.filter_criteria.filters:
        shown.discard("filter_criteria")
    return shown
