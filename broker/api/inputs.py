"""What the JSON operations read from a request, checked as Lambda checks it.

A body is a JSON object validated by Headwater's one model for that resource (the same model the
configuration file uses), and a refusal is worded as Lambda words it: a member out of its range or
outside its enum is `ValidationException` ("1 validation error detected: Value '5' at
'maximumRetryAttempts' failed to satisfy constraint: ..."), any other problem
`InvalidParameterValueException` naming the member. `Marker`/`MaxItems` paging is shared too:
markers are opaque (base64 of the last key listed), so botocore's paginators work unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from broker.api import errors
from broker.api.operation import Call

ModelT = TypeVar("ModelT", bound=BaseModel)
_BOUNDS = {
    "greater_than_equal": ("ge", "greater than or equal to"),
    "less_than_equal": ("le", "less than or equal to"),
    "greater_than": ("gt", "greater than"),
    "less_than": ("lt", "less than"),
}


def json_object(call: Call) -> dict[str, Any]:
    """The body as a JSON object (an empty body is `{}`)."""
    if not call.body.strip():
        return {}
    try:
        document = json.loads(call.body)
    except ValueError as error:
        raise errors.ApiError(
            "InvalidRequestContentException", 400, f"Could not parse request body into json: {error}"
        ) from None
    if not isinstance(document, dict):
        raise errors.ApiError("InvalidRequestContentException", 400, "The request body must be a JSON object")
    return document


def validated(model: type[ModelT], document: dict[str, Any]) -> ModelT:
    """`document` as `model`, or Lambda's refusal for its first problems."""
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise refusal(error) from None


def refusal(error: ValidationError) -> errors.ApiError:
    problems = error.errors()
    constraints = [_constraint(problem) for problem in problems]
    if all(constraints):
        count = len(constraints)
        noun = "error" if count == 1 else "errors"
        return errors.ApiError(
            "ValidationException", 400, f"{count} validation {noun} detected: {'; '.join(map(str, constraints))}"
        )
    return errors.invalid_parameter("; ".join(_problem(problem) for problem in problems))


def member(location: tuple[int | str, ...]) -> str:
    """A pydantic location as Lambda names members: `destinationConfig.onFailure.destination`."""
    return ".".join(part[:1].lower() + part[1:] if isinstance(part, str) else str(part) for part in location)


def _constraint(problem: Any) -> str | None:
    """Lambda's "Value 'x' at 'member' failed to satisfy constraint: ..." for range and enum problems."""
    at = member(problem["loc"])
    value = str(problem.get("input"))[:64]
    if problem["type"] in _BOUNDS:
        key, words = _BOUNDS[problem["type"]]
        return f"Value '{value}' at '{at}' failed to satisfy constraint: Member must have value {words} " + str(
            problem["ctx"][key]
        )
    if problem["type"] == "literal_error":
        allowed = problem["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return (
            f"Value '{value}' at '{at}' failed to satisfy constraint: Member must satisfy enum value set: [{allowed}]"
        )
    if problem["type"] == "missing":
        return f"Value null at '{at}' failed to satisfy constraint: Member must not be null"
    return None


def _problem(problem: Any) -> str:
    """One problem, named by its member; a rule across members (no location) is its message alone."""
    message = str(problem["msg"]).removeprefix("Value error, ")
    at = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"{at}: not a parameter Headwater accepts here"
    return f"{at}: {message}" if at else message


def max_items(call: Call, page_limit: int, most: int) -> int:
    """`MaxItems` (1..`most`), capped at the operation's page size."""
    raw = call.query("MaxItems")
    if raw is None:
        return page_limit
    try:
        value = int(raw)
    except ValueError:
        raise errors.validation(
            f"Value '{raw[:32]}' at 'maxItems' failed to satisfy constraint: Member must be a number"
        ) from None
    if not 1 <= value <= most:
        bound = "greater than or equal to 1" if value < 1 else f"less than or equal to {most}"
        raise errors.validation(
            f"Value '{value}' at 'maxItems' failed to satisfy constraint: Member must have value {bound}"
        )
    return min(value, page_limit)


def marker(call: Call, operation: str) -> str | None:
    """The last key of the previous page, from `Marker`."""
    raw = call.query("Marker")
    if raw is None:
        return None
    try:
        return base64.urlsafe_b64decode(raw.encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeError is a ValueError
        raise errors.invalid_parameter(
            f"Invalid Marker: pass the NextMarker of a previous {operation} answer"
        ) from None


def next_marker(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii")
