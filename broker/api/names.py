"""Function names as Lambda accepts them in a path: `name`, `name:qualifier`,
`123456789012:function:name[:qualifier]` or `arn:aws:lambda:REGION:ACCOUNT:function:name[:qualifier]`,
with an optional `Qualifier` query parameter. Every resource family resolves names here.

Headwater's functions have one version, `$LATEST`: any other version or alias is not found, as a
version that was never published is on Lambda.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker import invocation_records
from broker.api import errors
from broker.config import Config, Function

LATEST = "$LATEST"
NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)"
    r"(:(\$LATEST|[a-zA-Z0-9-_]+))?"
)
_NAME = re.compile(NAME_PATTERN)
_QUALIFIER = re.compile(r"^(|[a-zA-Z0-9$_-]+)$")
MAX_NAME_LENGTH = 256


@dataclass(frozen=True)
class FunctionRef:
    """A resolved reference: the function's name, the qualifier asked for (None: unqualified), and
    whether it came as an ARN with a region and account (which must be ours)."""

    name: str
    qualifier: str | None
    region: str | None = None
    account_id: str | None = None


def parse(raw: str, qualifier: str | None) -> FunctionRef:
    """Split a path's FunctionName; reconcile its qualifier with `?Qualifier=` as Lambda does."""
    match = _NAME.fullmatch(raw) if 1 <= len(raw) <= MAX_NAME_LENGTH else None
    if match is None:
        rule = (
            "have length less than or equal to 256"
            if len(raw) > MAX_NAME_LENGTH
            else f"satisfy regular expression pattern: {NAME_PATTERN}"
        )
        raise errors.validation(
            f"Value '{raw[:MAX_NAME_LENGTH]}' at 'functionName' failed to satisfy constraint: Member must {rule}"
        )
    if qualifier is not None and not (1 <= len(qualifier) <= 128 and _QUALIFIER.match(qualifier)):
        raise errors.validation(
            f"Value '{qualifier[:128]}' at 'qualifier' failed to satisfy constraint: Member must satisfy regular "
            "expression pattern: (|[a-zA-Z0-9$_-]+)"
        )
    derived = match.group(9)
    if derived is not None and qualifier is not None and derived != qualifier:
        raise errors.invalid_parameter(
            "The derived qualifier from the function name does not match the specified qualifier."
        )
    region = match.group(3)[:-1] if match.group(3) else None
    account = match.group(5)[:-1] if match.group(5) else None
    return FunctionRef(match.group(7), derived or qualifier, region, account)


def resolve(config: Config, ref: FunctionRef, *, unqualified_suffix: str | None = None) -> Function:
    """The configured function `ref` names, or Lambda's 404 naming the ARN it looked for (with
    `unqualified_suffix` appended when no qualifier was given: Invoke says `:$LATEST`)."""
    settings = config.headwater
    function = config.function(ref.name)
    ours = ref.region in (None, settings.region) and ref.account_id in (None, settings.account_id)
    if function is None or not ours or ref.qualifier not in (None, LATEST):
        region, account = ref.region or settings.region, ref.account_id or settings.account_id
        arn = invocation_records.function_arn(region, account, ref.name, ref.qualifier or unqualified_suffix)
        raise errors.not_found(f"Function not found: {arn}")
    return function
