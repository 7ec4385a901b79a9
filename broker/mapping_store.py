"""Event source mappings created at run time (through the API), kept in Redis for every poller.

The configuration file and this store are the two sources of mappings. Every `headwater poll`
replica runs both: the file's, re-read on SIGHUP, and the store's, re-read whenever the store's
generation counter moves (checked every few seconds). The file wins: a stored mapping whose
function and source (its identity) or UUID the file also has is not run, and the API refuses to
create one, or to update or delete the file's mappings (they change where they are written).

Each record holds the mapping as validated by the one mapping model, plus the transition the user
asked for last (`Creating`, `Enabling`, `Disabling`, `Updating`) and when: the pollers report what
actually happened through `broker.mapping_state`, and a reader shows the asked-for transition
until a poller has settled it (see `pending_state`). This module is the only one touching the
store's keys; every change bumps the generation in the same transaction as the change itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError

from broker import keys
from broker.config import Config
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.sources.base import kind_of

SETTLED_STATES = frozenset({"Enabled", "Disabled"})  # what a poller reports once a transition is over
log = get_logger(__name__)


class IdentityTakenError(Exception):
    """Another mapping (`uuid`) already reads the same source into the same function."""

    def __init__(self, uuid: str) -> None:
        super().__init__(uuid)
        self.uuid = uuid


@dataclass(frozen=True)
class StoredMapping:
    """A mapping created through the API, with the transition last asked for (None: nothing pending)."""

    mapping: EventSourceMapping
    transition: str | None
    modified_at: float  # LastModified: when the user last changed it

    def to_json(self) -> str:
        document = self.mapping.model_dump(mode="json", by_alias=True, exclude_unset=True)
        document["UUID"] = self.mapping.uuid
        return json.dumps({"Mapping": document, "Transition": self.transition, "ModifiedAt": self.modified_at})

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredMapping:
        record = json.loads(text)
        mapping = EventSourceMapping.model_validate(record["Mapping"])
        return cls(mapping, record["Transition"], float(record["ModifiedAt"]))

    def pending_state(self, state: str | None, state_at: float) -> str | None:
        """The transition to show instead of the pollers' `state` (written at `state_at`): the one
        asked for, until a poller reports a settled state after it. None: show the pollers'."""
        if self.transition is None or (state in SETTLED_STATES and state_at >= self.modified_at):
            return None
        return self.transition


def identity(mapping: EventSourceMapping) -> tuple[str, str]:
    """What makes two mappings the same: the function and the source (queue, stream, topic...)."""
    raw = mapping.model_dump(by_alias=True, exclude_none=True)
    return mapping.function_name, kind_of(mapping).identity(raw)


class MappingStore:
    """The stored mappings; writes are optimistic transactions, so API replicas never race."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def generation(self) -> int:
        return int(self.redis.get(keys.MAPPINGS_GENERATION) or 0)

    def load(self) -> dict[str, StoredMapping]:
        """Every stored mapping by UUID; a record no longer valid (a newer model refused it) is
        logged and left out rather than stopping every other mapping."""
        loaded = {}
        for key, text in self.redis.hgetall(keys.MAPPINGS).items():
            uuid = key.decode() if isinstance(key, bytes) else key
            try:
                loaded[uuid] = StoredMapping.from_json(text)
            except ValueError as error:
                log.error("stored event source mapping is not valid; ignored", mapping=uuid, error=str(error))
        return loaded

    def get(self, uuid: str) -> StoredMapping | None:
        text = self.redis.hget(keys.MAPPINGS, uuid)
        return None if text is None else StoredMapping.from_json(text)

    def create(self, stored: StoredMapping, file_mappings: Iterable[EventSourceMapping]) -> None:
        """Store a new mapping; `IdentityTakenError` if the file or the store already has its identity."""
        fixed = list(file_mappings)
        self._change(lambda current: self._checked(stored, current, fixed))

    def update(
        self,
        uuid: str,
        change: Callable[[StoredMapping], StoredMapping],
        file_mappings: Iterable[EventSourceMapping],
    ) -> StoredMapping | None:
        """Apply `change` to the stored mapping (None if there is none), atomically."""
        fixed = list(file_mappings)
        changed: list[StoredMapping] = []

        def apply(current: dict[str, StoredMapping]) -> dict[str, StoredMapping] | None:
            if uuid not in current:
                return None
            changed[:] = [change(current[uuid])]
            return self._checked(changed[0], current, fixed)

        self._change(apply)
        return changed[0] if changed else None

    def delete(self, uuid: str) -> StoredMapping | None:
        """Remove a mapping; the pollers stop it at their next check. Returns what was removed."""
        removed: list[StoredMapping] = []

        def apply(current: dict[str, StoredMapping]) -> dict[str, StoredMapping] | None:
            if uuid not in current:
                return None
            removed[:] = [current.pop(uuid)]
            return current

        self._change(apply)
        return removed[0] if removed else None

    @staticmethod
    def _checked(
        stored: StoredMapping, current: dict[str, StoredMapping], file_mappings: list[EventSourceMapping]
    ) -> dict[str, StoredMapping]:
        wanted = identity(stored.mapping)
        others = [*file_mappings, *(s.mapping for u, s in current.items() if u != stored.mapping.uuid)]
        for other in others:
            if identity(other) == wanted:
                raise IdentityTakenError(other.uuid)
        return {**current, stored.mapping.uuid: stored}

    def _change(self, apply: Callable[[dict[str, StoredMapping]], dict[str, StoredMapping] | None]) -> None:
        """Read every record, let `apply` compute the new set (None: no change), and write the
        difference with the generation bump, retrying if another writer got in first."""
        while True:
            with self.redis.pipeline(transaction=True) as pipe:  # explicit: a cluster pipeline defaults to none
                try:
                    pipe.watch(keys.MAPPINGS)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    current = self.load()
                    wanted = apply(dict(current))
                    if wanted is None:
                        return
                    pipe.multi()
                    for uuid in current.keys() - wanted.keys():
                        pipe.hdel(keys.MAPPINGS, uuid)
                    for uuid, stored in wanted.items():
                        if current.get(uuid) != stored:
                            pipe.hset(keys.MAPPINGS, uuid, stored.to_json())
                    pipe.incr(keys.MAPPINGS_GENERATION)
                    pipe.execute()
                except WatchError:
                    continue
                return


def combined(config: Config, stored: dict[str, StoredMapping]) -> Config:
    """The file's configuration with the stored mappings added: the ones whose function the file
    defines and whose UUID and identity the file does not already have (the file wins)."""
    taken_uuids = {mapping.uuid for mapping in config.event_source_mappings}
    taken = {identity(mapping) for mapping in config.event_source_mappings}
    added = []
    for uuid, record in sorted(stored.items()):
        mapping = record.mapping
        if config.function(mapping.function_name) is None:
            log.warning("stored mapping names a function the file does not define; not run", mapping=uuid)
        elif uuid in taken_uuids or identity(mapping) in taken:
            log.warning("stored mapping duplicates one of the file's; the file's runs", mapping=uuid)
        else:
            added.append(mapping)
    return config.model_copy(update={"event_source_mappings": [*config.event_source_mappings, *added]})
