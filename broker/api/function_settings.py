"""Reserved concurrency and asynchronous-invocation settings of a function, set at run time.

Put/Get/DeleteFunctionConcurrency (`/2017-10-31/...concurrency`, Get under `/2019-09-30/`) and
Put/Get/Update/Delete/ListFunctionEventInvokeConfig(s) (`/2019-09-25/...event-invoke-config`).

Values put here are stored in Redis (`broker.function_overrides`) and replace the configuration
file's for that function: workers apply them within about a second, this process's Invoke at once.
Delete removes the stored value, so the file's applies again; a value that only the file sets
cannot be deleted here (`ResourceConflictException`: change it in the file). Get answers the value
in force: the stored one, else the file's.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import JSONResponse, Response

from broker import destinations, invocation_records
from broker.api import errors, inputs, names, stores
from broker.api.operation import Call, Operation
from broker.config import EventInvokeConfig, Function
from broker.function_overrides import StoredInvokeConfig
from broker.schema import Model

UNQUALIFIED_ONLY = (
    "This operation is permitted on Lambda functions only. Aliases and versions do not support this operation. "
    "Please specify either a function name or an unqualified function ARN."
)
LIST_PAGE_LIMIT = 50


class ConcurrencyRequest(Model):
    reserved_concurrent_executions: int

    @classmethod
    def checked(cls, document: dict[str, Any]) -> int:
        value = inputs.validated(cls, document).reserved_concurrent_executions
        if value < 0:
            raise errors.validation(
                f"Value '{value}' at 'reservedConcurrentExecutions' failed to satisfy constraint: Member must have "
                "value greater than or equal to 0"
            )
        return value


# -- reserved concurrency --------------------------------------------------------------------------
async def reserved_concurrency(call: Call, function: Function) -> int | None:
    """The reserved concurrency in force: the stored value, else the file's (GetFunction shows it)."""
    store = stores.function_overrides(call)
    stored = await stores.run(call, lambda: store.concurrency(function.function_name))
    return stored if stored is not None else function.reserved_concurrent_executions


async def put_concurrency(call: Call) -> Response:
    function = _unqualified(call)
    reserved = ConcurrencyRequest.checked(inputs.json_object(call))
    store = stores.function_overrides(call)
    await stores.run(call, lambda: store.put_concurrency(function.function_name, reserved))
    stores.changed_function_overrides(call)
    return JSONResponse({"ReservedConcurrentExecutions": reserved})


async def get_concurrency(call: Call) -> Response:
    reserved = await reserved_concurrency(call, _unqualified(call))
    return JSONResponse({} if reserved is None else {"ReservedConcurrentExecutions": reserved})


async def delete_concurrency(call: Call) -> Response:
    function = _unqualified(call)
    store = stores.function_overrides(call)
    removed = await stores.run(call, lambda: store.delete_concurrency(function.function_name))
    stores.changed_function_overrides(call)
    if not removed and function.reserved_concurrent_executions is not None:
        raise _set_in_file(function, "ReservedConcurrentExecutions")
    return Response(status_code=204)


# -- asynchronous invocation -------------------------------------------------------------------------
async def put_event_invoke_config(call: Call) -> Response:
    function = _latest(call)
    config = _checked_config(call, inputs.json_object(call))
    return await _store_config(call, function, config)


async def update_event_invoke_config(call: Call) -> Response:
    """Update merges: the members given replace the ones in force, the others stay."""
    function = _latest(call)
    changes = inputs.json_object(call)
    current = await _in_force(call, function)
    if current is None:
        raise _no_config(call, function)
    merged = {**current.config.model_dump(mode="json", by_alias=True, exclude_unset=True), **changes}
    return await _store_config(call, function, _checked_config(call, merged))


async def get_event_invoke_config(call: Call) -> Response:
    function = _latest(call)
    current = await _in_force(call, function)
    if current is None:
        raise _no_config(call, function)
    return JSONResponse(_described(call, function, current))


async def delete_event_invoke_config(call: Call) -> Response:
    function = _latest(call)
    store = stores.function_overrides(call)
    removed = await stores.run(call, lambda: store.delete_event_invoke_config(function.function_name))
    stores.changed_function_overrides(call)
    if not removed:
        raise (
            _set_in_file(function, "EventInvokeConfig") if _file_config(call, function) else _no_config(call, function)
        )
    return Response(status_code=204)


async def list_event_invoke_configs(call: Call) -> Response:
    """A function has one version here ($LATEST), so at most one configuration to list."""
    function = _latest(call)
    inputs.max_items(call, LIST_PAGE_LIMIT, LIST_PAGE_LIMIT)
    inputs.marker(call, "ListFunctionEventInvokeConfigs")
    current = None if call.query("Marker") else await _in_force(call, function)
    listed = [] if current is None else [_described(call, function, current)]
    return JSONResponse({"FunctionEventInvokeConfigs": listed})


async def _store_config(call: Call, function: Function, config: EventInvokeConfig) -> Response:
    stored = StoredInvokeConfig(config, time.time())
    store = stores.function_overrides(call)
    await stores.run(call, lambda: store.put_event_invoke_config(function.function_name, stored))
    stores.changed_function_overrides(call)
    return JSONResponse(_described(call, function, stored))


async def _in_force(call: Call, function: Function) -> StoredInvokeConfig | None:
    store = stores.function_overrides(call)
    stored = await stores.run(call, lambda: store.event_invoke_config(function.function_name))
    return stored if stored is not None else _file_config(call, function)


def _file_config(call: Call, function: Function) -> StoredInvokeConfig | None:
    """The file's EventInvokeConfig, if the file writes one (else Lambda's defaults apply: none)."""
    if "event_invoke_config" not in function.model_fields_set:
        return None
    return StoredInvokeConfig(function.event_invoke_config, call.state.config_modified_at)


def _checked_config(call: Call, document: dict[str, Any]) -> EventInvokeConfig:
    config = inputs.validated(EventInvokeConfig, document)
    targets = config.destination_config.on_success.destination, config.destination_config.on_failure.destination
    for target in targets:
        target_function = destinations.function_name_of(target) if target else None
        if target_function is not None and call.state.config.function(target_function) is None:
            raise errors.invalid_parameter(f"The destination {target} names a function Headwater does not define")
    return config


def _described(call: Call, function: Function, stored: StoredInvokeConfig) -> dict[str, Any]:
    """Lambda's FunctionEventInvokeConfig: unset destinations are `{}`, unset members omitted."""
    config = stored.config
    answer: dict[str, Any] = {"FunctionArn": _arn(call, function), "LastModified": stored.modified_at}
    if "maximum_retry_attempts" in config.model_fields_set:
        answer["MaximumRetryAttempts"] = config.maximum_retry_attempts
    if "maximum_event_age_in_seconds" in config.model_fields_set:
        answer["MaximumEventAgeInSeconds"] = config.maximum_event_age_in_seconds
    targets = config.destination_config
    answer["DestinationConfig"] = {
        "OnSuccess": _destination(targets.on_success.destination),
        "OnFailure": _destination(targets.on_failure.destination),
    }
    return answer


def _destination(target: str | None) -> dict[str, str]:
    return {"Destination": target} if target else {}


def _arn(call: Call, function: Function) -> str:
    settings = call.state.config.headwater
    return invocation_records.function_arn(settings.region, settings.account_id, function.function_name, names.LATEST)


def _no_config(call: Call, function: Function) -> errors.ApiError:
    return errors.not_found(f"The function {_arn(call, function)} doesn't have an EventInvokeConfig")


def _set_in_file(function: Function, setting: str) -> errors.ApiError:
    return errors.ApiError(
        "ResourceConflictException",
        409,
        f"{setting} of function {function.function_name} is set in Headwater's configuration file; change it there "
        "(what the API puts replaces it, and deleting removes only what the API put)",
    )


def _unqualified(call: Call) -> Function:
    ref = names.parse(call.path_params["FunctionName"], None)
    if ref.qualifier is not None:
        raise errors.invalid_parameter(UNQUALIFIED_ONLY)
    return names.resolve(call.state.config, ref)


def _latest(call: Call) -> Function:
    ref = names.parse(call.path_params["FunctionName"], call.query("Qualifier"))
    return names.resolve(call.state.config, ref)


CONCURRENCY = "/functions/{FunctionName}/concurrency"
EVENT_INVOKE_CONFIG = "/2019-09-25/functions/{FunctionName}/event-invoke-config"
OPERATIONS = (
    Operation("PutFunctionConcurrency", "PUT", f"/2017-10-31{CONCURRENCY}", put_concurrency),
    Operation("GetFunctionConcurrency", "GET", f"/2019-09-30{CONCURRENCY}", get_concurrency),
    Operation("DeleteFunctionConcurrency", "DELETE", f"/2017-10-31{CONCURRENCY}", delete_concurrency),
    Operation("PutFunctionEventInvokeConfig", "PUT", EVENT_INVOKE_CONFIG, put_event_invoke_config),
    Operation("UpdateFunctionEventInvokeConfig", "POST", EVENT_INVOKE_CONFIG, update_event_invoke_config),
    Operation("GetFunctionEventInvokeConfig", "GET", EVENT_INVOKE_CONFIG, get_event_invoke_config),
    Operation("DeleteFunctionEventInvokeConfig", "DELETE", EVENT_INVOKE_CONFIG, delete_event_invoke_config),
    Operation("ListFunctionEventInvokeConfigs", "GET", f"{EVENT_INVOKE_CONFIG}/list", list_event_invoke_configs),
)
