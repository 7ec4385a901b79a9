"""The base every configuration section shares: Lambda's PascalCase outside, snake_case inside."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_pascal


class Model(BaseModel):
    """Frozen, alias-generated, and strict about unknown keys: a typo must not pass silently."""

    model_config = ConfigDict(alias_generator=to_pascal, populate_by_name=True, extra="forbid", frozen=True)
