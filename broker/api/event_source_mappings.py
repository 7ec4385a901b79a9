"""Create/Get/Update/Delete/ListEventSourceMappings, stored in Redis and run by every poller.

Two sources of mappings are listed together: the configuration file's and the ones created here
(`broker.mapping_store`), which every `headwater poll` replica picks up within a few seconds. The
file wins: its mappings are read-only here (Update and Delete answer `ResourceConflictException`:
they change in the file, then SIGHUP), and a mapping created here may not read the same source
into the same function as any other (`ResourceConflictException` naming the existing UUID).

State is what the pollers report (`broker.mapping_state`), except while a change asked for here
is not yet settled: Create shows `Creating`, Update `Enabling`, `Disabling` or `Updating`, until a
poller reports `Enabled` or `Disabled` after it. Delete answers `Deleting`; from then on Get is 404
and the pollers drain and stop the mapping at their next check. An Update while `Creating` or
`Updating`, or a Delete while `Updating`, is `ResourceInUseException`, as on Lambda.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.responses import JSONResponse, Response

from broker import mapping_state
from broker.api import errors, inputs, names, stores
from broker.api.errors import ApiError
from broker.api.operation import Call, Operation
from broker.config import Config
from broker.mapping import EventSourceMapping
from broker.mapping_store import IdentityTakenError, StoredMapping

PAGE_LIMIT = 100  # ListEventSourceMappings returns at most 100 per page, whatever MaxItems asks
NOT_FOUND = "The resource you requested does not exist."
FIXED_ON_UPDATE = ("EventSourceArn", "StartingPosition", "StartingPositionTimestamp", "Topics", "Queues",
                   "SelfManagedEventSource", "Tags")  # fmt: skip
BUSY = frozenset({"Creating", "Updating"})


async def create(call: Call) -> Response:
    document = inputs.json_object(call)
    for key in ("UUID", "Tags"):
        if key in document:
            raise errors.invalid_parameter(f"{key}: not a parameter Headwater accepts here")
    if not document.get("EventSourceArn") and not document.get("SelfManagedEventSource"):
        raise errors.invalid_parameter("Unrecognized event source.")
    document["UUID"] = str(uuid.uuid4())
    mapping = _validated(call, document)
    stored = StoredMapping(mapping, "Creating", time.time())
    store = stores.mapping_store(call)
    try:
        await stores.run(call, lambda: store.create(stored, call.state.config.event_source_mappings))
    except IdentityTakenError as taken:
        raise _conflict(mapping, taken.uuid) from None
    return JSONResponse(_described(call, mapping, {}, stored), 202)


async def get(call: Call) -> Response:
    mapping, stored = await _find(call)
    states = await _states(call, [mapping])
    return JSONResponse(_described(call, mapping, states[mapping.uuid], stored))


async def update(call: Call) -> Response:
    changes = inputs.json_object(call)
    for key in ("UUID", *FIXED_ON_UPDATE):
        if key in changes:
            raise errors.invalid_parameter(f"{key} cannot be changed by UpdateEventSourceMapping")
    mapping, stored = await _find(call, operation="updated")
    state = (await _states(call, [mapping]))[mapping.uuid]
    if _state(call, mapping, state, stored) in BUSY:
        raise _in_use("update")

    def changed(current: StoredMapping) -> StoredMapping:
        document = current.mapping.model_dump(mode="json", by_alias=True, exclude_unset=True)
        after = _validated(call, {**document, **changes, "UUID": current.mapping.uuid})
        if after == current.mapping:
            return current
        return StoredMapping(after, _transition(current.mapping, after), time.time())

    store = stores.mapping_store(call)
    try:
        updated = await stores.run(
            call, lambda: store.update(mapping.uuid, changed, call.state.config.event_source_mappings)
        )
    except IdentityTakenError as taken:
        raise _conflict(mapping, taken.uuid) from None
    if updated is None:
        raise errors.not_found(NOT_FOUND)
    return JSONResponse(_described(call, updated.mapping, state, updated), 202)


async def delete(call: Call) -> Response:
    mapping, stored = await _find(call, operation="deleted")
    state = (await _states(call, [mapping]))[mapping.uuid]
    if _state(call, mapping, state, stored) == "Updating":
        raise _in_use("delete")
    store = stores.mapping_store(call)
    removed = await stores.run(call, lambda: store.delete(mapping.uuid))
    if removed is None:
        raise errors.not_found(NOT_FOUND)
    answer = _described(call, removed.mapping, state, removed)
    answer.update(State="Deleting", StateTransitionReason=mapping_state.user_action_reason(removed.mapping))
    return JSONResponse(answer, 202)


async def list_mappings(call: Call) -> Response:
    page_size = inputs.max_items(call, PAGE_LIMIT, 10000)
    after = inputs.marker(call, "ListEventSourceMappings")
    store = stores.mapping_store(call)
    stored = await stores.run(call, store.load)
    listed = [*call.state.config.event_source_mappings, *(record.mapping for record in stored.values())]
    function_name = _function_filter(call)
    arn = call.query("EventSourceArn")
    chosen = sorted(
        (m for m in listed if function_name in (None, m.function_name) and arn in (None, m.event_source_arn)),
        key=lambda mapping: mapping.uuid,
    )
    if after is not None:
        chosen = [mapping for mapping in chosen if mapping.uuid > after]
    page = chosen[:page_size]
    states = await _states(call, page)
    body: dict[str, Any] = {
        "EventSourceMappings": [_described(call, m, states[m.uuid], stored.get(m.uuid)) for m in page]
    }
    if len(chosen) > page_size:
        body["NextMarker"] = inputs.next_marker(page[-1].uuid)
    return JSONResponse(body)


# -- helpers -----------------------------------------------------------------------------------------
async def _find(call: Call, operation: str | None = None) -> tuple[EventSourceMapping, StoredMapping | None]:
    """The mapping the path names: the file's (read-only: `operation` is refused) or a stored one."""
    wanted = call.path_params["UUID"]
    for mapping in call.state.config.event_source_mappings:
        if mapping.uuid == wanted:
            if operation is not None:
                raise errors.ApiError(
                    "ResourceConflictException",
                    409,
                    f"The event source mapping {wanted} is defined in Headwater's configuration file; it can only be "
                    f"{operation} there (then send SIGHUP to `headwater poll`)",
                )
            return mapping, None
    store = stores.mapping_store(call)
    stored = await stores.run(call, lambda: store.get(wanted))
    if stored is None:
        raise errors.not_found(NOT_FOUND)
    return stored.mapping, stored


async def _states(call: Call, mappings: list[EventSourceMapping]) -> dict[str, dict[str, str]]:
    """What the pollers last reported for each mapping (empty: nothing yet)."""
    if not mappings:
        return {}
    only: Config = call.state.config.model_copy(update={"event_source_mappings": mappings})
    redis = call.state.client.redis
    return await stores.run(call, lambda: mapping_state.read_states(redis, only))


def _described(
    call: Call, mapping: EventSourceMapping, state: dict[str, str], stored: StoredMapping | None
) -> dict[str, Any]:
    """Lambda's EventSourceMappingConfiguration, with a change asked for here shown until settled."""
    modified = stored.modified_at if stored is not None else call.state.config_modified_at
    answer = mapping_state.describe(mapping, call.state.config, state, modified)
    pending = _pending(state, stored)
    if pending is not None:
        answer.update(
            State=pending,
            StateTransitionReason=mapping_state.user_action_reason(mapping),
            LastModified=modified,
        )
    return answer


def _state(call: Call, mapping: EventSourceMapping, state: dict[str, str], stored: StoredMapping | None) -> str:
    return str(_described(call, mapping, state, stored)["State"])


def _pending(state: dict[str, str], stored: StoredMapping | None) -> str | None:
    if stored is None:
        return None
    return stored.pending_state(state.get("State"), float(state.get("LastModified", 0.0)))


def _transition(before: EventSourceMapping, after: EventSourceMapping) -> str | None:
    """The state an Update passes through; None when the mapping stays off (it stays Disabled)."""
    if after.enabled:
        return "Updating" if before.enabled else "Enabling"
    return "Disabling" if before.enabled else None


def _validated(call: Call, document: dict[str, Any]) -> EventSourceMapping:
    """The mapping model's verdict, with Lambda's words where Lambda has some."""
    destination = document.get("DestinationConfig")
    if isinstance(destination, dict) and "OnSuccess" in destination:
        raise errors.invalid_parameter("Unsupported DestinationConfig parameter for given event source mapping type.")
    if "FunctionName" in document:
        document = {**document, "FunctionName": _function_name(call, document["FunctionName"])}
    try:
        return inputs.validated(EventSourceMapping, document)
    except ApiError as refusal:
        if "StartingPosition is required" in refusal.message:
            raise errors.invalid_parameter(
                "1 validation error detected: Value null at 'startingPosition' failed to satisfy constraint: Member "
                "must not be null."
            ) from None
        raise


def _function_name(call: Call, raw: object) -> str:
    """The configured function a mapping's FunctionName names; Lambda answers 400 if there is none."""
    if not isinstance(raw, str):
        raise errors.invalid_parameter("FunctionName must be a string")
    ref = names.parse(raw, None)
    try:
        return names.resolve(call.state.config, ref).function_name
    except ApiError:
        raise errors.invalid_parameter("Function does not exist") from None


def _function_filter(call: Call) -> str | None:
    """The List filter's function, resolved; an unknown one matches nothing (Lambda answers `[]`)."""
    raw = call.query("FunctionName")
    if raw is None:
        return None
    try:
        return names.resolve(call.state.config, names.parse(raw, None)).function_name
    except ApiError as refusal:
        if refusal.code == "ResourceNotFoundException":
            return ""
        raise


def _conflict(mapping: EventSourceMapping, existing: str) -> ApiError:
    return ApiError(
        "ResourceConflictException",
        409,
        f'The event source arn (" {mapping_state.source_of(mapping)} ") and function (" {mapping.function_name} ") '
        f"provided mapping already exists. Please update or delete the existing mapping with UUID {existing}",
    )


def _in_use(action: str) -> ApiError:
    return ApiError("ResourceInUseException", 400, f"Cannot {action} the event source mapping because it is in use.")


BASE = "/2015-03-31/event-source-mappings"
OPERATIONS = (
    Operation("CreateEventSourceMapping", "POST", f"{BASE}/", create),
    Operation("CreateEventSourceMapping", "POST", BASE, create),
    Operation("ListEventSourceMappings", "GET", f"{BASE}/", list_mappings),
    Operation("ListEventSourceMappings", "GET", BASE, list_mappings),
    Operation("GetEventSourceMapping", "GET", f"{BASE}/{{UUID}}", get),
    Operation("UpdateEventSourceMapping", "PUT", f"{BASE}/{{UUID}}", update),
    Operation("DeleteEventSourceMapping", "DELETE", f"{BASE}/{{UUID}}", delete),
)
