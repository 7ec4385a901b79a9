"""Destination kinds (one module each, registered on import) and lookups on target strings.

Every kind module is imported here, so `kind_for` knows them all; a kind imports its SDK (aiokafka,
botocore) only when it first writes to a target, so resolving and validating targets loads none.
"""

from __future__ import annotations

import importlib
import pkgutil

from broker.destinations.base import DeliveryContext, DestinationKind, Message

_KINDS: list[type[DestinationKind]] = []


def register(kind: type[DestinationKind]) -> type[DestinationKind]:
    _KINDS.append(kind)
    return kind


def kind_for(target: str) -> type[DestinationKind]:
    """The kind that owns `target`; a ValueError listing every accepted form otherwise."""
    for kind in _KINDS:
        if kind.matches(target):
            return kind
    forms = "; ".join(kind.forms for kind in _KINDS)
    raise ValueError(f"{target!r} is not a destination Headwater can write to (accepted: {forms})")


def function_name_of(target: str) -> str | None:
    """The function a `arn:aws:lambda:...:function:NAME[:QUALIFIER]` target names, else None."""
    parts = target.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == "lambda" and parts[5] == "function":
        return parts[6]
    return None


for _module in pkgutil.iter_modules(__path__):
    if _module.name not in {"base", "dispatcher"}:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DeliveryContext", "DestinationKind", "Message", "function_name_of", "kind_for", "register"]
