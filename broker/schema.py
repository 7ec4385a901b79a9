"""The base every configuration section shares: Lambda's PascalCase outside, snake_case inside."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_pascal

from broker import destinations


class Model(BaseModel):
    """Frozen, alias-generated, and strict about unknown keys: a typo must not pass silently."""

    model_config = ConfigDict(alias_generator=to_pascal, populate_by_name=True, extra="forbid", frozen=True)


def _destination_kind_known(target: str | None) -> str | None:
    """An empty target means none (Lambda's `""` removes a destination); any other must have a kind."""
    if target:
        destinations.kind_for(target)  # a ValueError naming every accepted form
    return target or None


DestinationTarget = Annotated[str | None, AfterValidator(_destination_kind_known)]
