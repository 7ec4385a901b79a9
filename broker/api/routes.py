"""The routes table: every operation the API answers, one resource family per module.

A family is added as its own module exposing `OPERATIONS` (see `broker.api.operation`) and one line
here. A path no operation matches is `UnknownOperationException`, as it is for an operation Lambda
has and Headwater does not (yet).
"""

from __future__ import annotations

from broker.api import event_source_mappings, function_settings, functions, invoke
from broker.api.operation import Operation

OPERATIONS: tuple[Operation, ...] = (
    *invoke.OPERATIONS,
    *functions.OPERATIONS,
    *event_source_mappings.OPERATIONS,
    *function_settings.OPERATIONS,
)
