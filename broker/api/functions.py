"""ListFunctions, GetFunction and GetFunctionConfiguration, read from the configuration file.

Every function is `$LATEST`, `Active`, last updated successfully (so boto3's `function_active` and
`function_updated` waiters return at once), last modified when the file was. `RevisionId` is derived
from the function's configuration, so it changes exactly when the function's entry does.
`Environment.Variables` are returned, as Lambda returns them: the API must run with authentication
wherever those values are secret.
"""

from __future__ import annotations

import platform
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse, Response

from broker import invocation_records
from broker.api import inputs, names
from broker.api.function_settings import reserved_concurrency
from broker.api.operation import Call, Operation
from broker.config import Function

PAGE_LIMIT = 50  # ListFunctions returns at most 50 per page, whatever MaxItems asks
REVISION_NAMESPACE = uuid.UUID("6b1d5d1e-3c35-4b3e-9a53-7a1f0c1f2d10")
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
ARCHITECTURE = "arm64" if platform.machine() in ("arm64", "aarch64") else "x86_64"


def configuration(call: Call, function: Function, qualifier: str | None, *, listing: bool = False) -> dict[str, Any]:
    """Lambda's FunctionConfiguration; a listing leaves out the state fields, as ListFunctions does."""
    settings = call.state.config.headwater
    name = function.function_name
    document: dict[str, Any] = {
        "FunctionName": name,
        "FunctionArn": invocation_records.function_arn(settings.region, settings.account_id, name, qualifier),
        "Runtime": RUNTIME,
        "Handler": function.handler,
        "CodeSize": 0,
        "Description": "",
        "Timeout": function.timeout,
        "MemorySize": function.memory_size,
        "LastModified": _lambda_time(call.state.config_modified_at),
        "Version": names.LATEST,
        "RevisionId": str(uuid.uuid5(REVISION_NAMESPACE, function.model_dump_json())),
        "PackageType": "Zip",
        "Architectures": [ARCHITECTURE],
        "EphemeralStorage": {"Size": 512},
        "TracingConfig": {"Mode": "PassThrough"},
        "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{name}"},
    }
    if function.environment.variables:
        document["Environment"] = {"Variables": dict(function.environment.variables)}
    if function.dead_letter_config.target_arn:
        document["DeadLetterConfig"] = {"TargetArn": function.dead_letter_config.target_arn}
    if not listing:
        document.update(State="Active", LastUpdateStatus="Successful")
    return document


async def list_functions(call: Call) -> Response:
    page_size = inputs.max_items(call, PAGE_LIMIT, 10000)
    functions = sorted(call.state.config.functions, key=lambda function: function.function_name)
    after = inputs.marker(call, "ListFunctions")
    if after is not None:
        functions = [function for function in functions if function.function_name > after]
    page = functions[:page_size]
    body: dict[str, Any] = {"Functions": [configuration(call, function, None, listing=True) for function in page]}
    if len(functions) > page_size:
        body["NextMarker"] = inputs.next_marker(page[-1].function_name)
    return JSONResponse(body)


async def get_function(call: Call) -> Response:
    ref, function = _resolved(call)
    body: dict[str, Any] = {"Configuration": configuration(call, function, ref.qualifier)}
    reserved = await reserved_concurrency(call, function)  # the API's value, else the file's
    if reserved is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
    return JSONResponse(body)


async def get_function_configuration(call: Call) -> Response:
    ref, function = _resolved(call)
    return JSONResponse(configuration(call, function, ref.qualifier))


def _resolved(call: Call) -> tuple[names.FunctionRef, Function]:
    ref = names.parse(call.path_params["FunctionName"], call.query("Qualifier"))
    return ref, names.resolve(call.state.config, ref)


def _lambda_time(epoch_seconds: float) -> str:
    """FunctionConfiguration.LastModified is a string, `2020-04-10T19:06:32.563+0000`."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


OPERATIONS = (
    Operation("ListFunctions", "GET", "/2015-03-31/functions", list_functions),
    Operation("ListFunctions", "GET", "/2015-03-31/functions/", list_functions),  # older botocore models
    Operation("GetFunction", "GET", "/2015-03-31/functions/{FunctionName}", get_function),
    Operation(
        "GetFunctionConfiguration",
        "GET",
        "/2015-03-31/functions/{FunctionName}/configuration",
        get_function_configuration,
    ),
)
