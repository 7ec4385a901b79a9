"""Shard leases in Redis: which poller replica reads which shard of a mapping, and how far it got.

Source-neutral (Kinesis shards, DynamoDB Streams shards): a source discovers its shards and
registers them with their parents; every replica then calls `balance` every third of a lease, one
atomic script that renews its leases, takes unowned or lapsed ones up to a fair share
(ceil(eligible shards / live replicas)), and, when it holds fewer than its share while another
replica holds more, asks that replica to hand one over. The owner drains the shard (its batches in
flight settle and checkpoint) and `release`s it to the asker; an owner that does not do so within
the handoff limit loses it anyway (a forced steal).

A shard is eligible only when it has not ended and each of its parents has ended (its checkpoint
reached SHARD_END): a child shard starts only after its parent was drained, so records of one
partition key are never read out of order across a split or a merge.

Fencing: every change of owner bumps the shard's token. `checkpoint` and `release` apply only for
the owner holding that very token (compared inside the script), so a replica whose lease was taken
while it was stalled can no longer move the checkpoint, and learns at its next balance that it
lost the shard, after which it must not invoke it again.

Leases are judged on Redis's clock with an outage grace like the invocation queue's (see
`shard_lease_scripts`): after Redis itself was away (it restarted, or no lease of any kind was
renewed meanwhile), every lease gets a fresh period before it may be taken for a dead owner's, so a
Redis restart does not shuffle every shard. When only the replicas were away (a lone replica
SIGKILLed and restarted), there is no grace: a dead replica's leases are taken within one lease
period of its last renewal. A replica that cannot reach Redis keeps reading what it holds (its
batches cannot be invoked or checkpointed meanwhile anyway), and a refused checkpoint is the only
proof that a shard was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis import asyncio as redis_async
from redis.exceptions import RedisError

from broker import keys, shard_lease_scripts
from broker.errors import StoreUnavailable

DEFAULT_LEASE_SECONDS = 10.0
SHARD_END = "SHARD_END"


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """A shard as its source lists it: its id and the shards it was split or merged from."""

    shard_id: str
    parents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OwnedShard:
    """A lease this replica holds: the token that fences it, where to resume, how to start."""

    shard_id: str
    token: int
    checkpoint: str | None  # None: nothing checkpointed yet
    from_first_record: bool  # the shard appeared while the mapping ran: read it from its start


@dataclass(frozen=True, slots=True)
class Balance:
    """One balancing round as this replica saw it."""

    owned: dict[str, OwnedShard]
    handoffs: dict[str, str]  # shard id -> the replica that asked for it
    takes: dict[str, str]  # shard id -> how it was taken: unowned | expired | forced
    live_replicas: int
    eligible: int
    graced: int  # leases extended because Redis itself had been away


@dataclass(frozen=True, slots=True)
class ShardView:
    """One shard's lease as `headwater mappings` shows it."""

    shard_id: str
    owner: str | None
    checkpoint: str | None
    ended: bool
    iterator_age_seconds: float | None
    parents: tuple[str, ...]


class ShardLeases:
    """The shard leases of one mapping, as seen by one poller replica."""

    def __init__(
        self,
        redis: redis_async.Redis,
        mapping_uuid: str,
        replica_id: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        handoff_seconds: float = 60.0,
        function_name: str | None = None,
    ) -> None:
        self.redis = redis
        self.function_name = function_name  # whose workers' lease clock witnesses that Redis was there
        self.mapping_uuid = mapping_uuid
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self.handoff_seconds = handoff_seconds
        self._prefix = keys.shard_lease_prefix(mapping_uuid)
        self._scripts = {
            name: redis.register_script(getattr(shard_lease_scripts, name))
            for name in ("REGISTER", "BALANCE", "CHECKPOINT", "RELEASE")
        }

    @property
    def renew_every_seconds(self) -> float:
        return self.lease_seconds / 3

    async def register(self, shards: list[ShardInfo]) -> int:
        """Make shards known to every replica (idempotent); returns how many were new."""
        if not shards:
            return 0
        pairs = [value for shard in shards for value in (shard.shard_id, " ".join(shard.parents))]
        return int(await self._run("REGISTER", [keys.shard_set(self.mapping_uuid)], [self._prefix, *pairs]))

    async def balance(self, ages_ms: dict[str, int], *, leaving: bool = False) -> Balance:
        """Renew, take a fair share, ask for more; see the module docstring."""
        ttl_ms = int(self.lease_seconds * 1000)
        arguments: list[Any] = [self._prefix, self.replica_id, ttl_ms, ttl_ms // 2, int(self.handoff_seconds * 1000)]
        arguments.append("1" if leaving else "0")
        arguments.append(await self._worker_clock())
        for shard_id, age in ages_ms.items():
            arguments += [shard_id, age]
        script_keys = [
            keys.shard_set(self.mapping_uuid),
            keys.shard_replicas(self.mapping_uuid),
            keys.shard_clock(self.mapping_uuid),
        ]
        graced, live, eligible, owned, handoffs, takes = await self._run("BALANCE", script_keys, arguments)
        return Balance(
            owned=_owned(owned),
            handoffs=dict(_pairs(handoffs)),
            takes=dict(_pairs(takes)),
            live_replicas=int(live),
            eligible=int(eligible),
            graced=int(graced),
        )

    async def _worker_clock(self) -> str:
        """The function's worker lease clock (another slot than the mapping's, so read before the
        balance, not in it); '' when there is none, or no function was named."""
        if self.function_name is None:
            return ""
        try:
            value = await self.redis.get(keys.clock(self.function_name))
        except RedisError as error:
            raise StoreUnavailable(f"shard leases of mapping {self.mapping_uuid}: {error}") from error
        return "" if value is None else _text(value)

    async def checkpoint(self, shard: OwnedShard, sequence: str, *, ended: bool = False) -> bool:
        """Store `sequence` as the shard's checkpoint; False (nothing written) when fenced."""
        key = keys.shard_lease(self.mapping_uuid, shard.shard_id)
        arguments = [self.replica_id, shard.token, sequence, "1" if ended else "0"]
        return bool(await self._run("CHECKPOINT", [key], arguments))

    async def release(self, shard: OwnedShard, successor: str = "") -> bool:
        """Let the lease go (to `successor` when it is alive); False when it was no longer ours."""
        key = keys.shard_lease(self.mapping_uuid, shard.shard_id)
        arguments = [self.replica_id, shard.token, successor, int(self.lease_seconds * 1000)]
        return bool(await self._run("RELEASE", [key, keys.shard_replicas(self.mapping_uuid)], arguments))

    async def _run(self, script: str, script_keys: list[str], arguments: list[Any]) -> Any:
        try:
            return await self._scripts[script](keys=script_keys, args=arguments)
        except RedisError as error:
            raise StoreUnavailable(f"shard leases of mapping {self.mapping_uuid}: {error}") from error


def read_shards(redis: Redis, mapping_uuid: str) -> list[ShardView]:
    """Every known shard of a mapping with its lease, for `headwater mappings` (sorted by id)."""
    shard_ids = sorted(_text(value) for value in cast(set[bytes], redis.smembers(keys.shard_set(mapping_uuid))))
    pipe = redis.pipeline(transaction=False)
    for shard_id in shard_ids:
        pipe.hgetall(keys.shard_lease(mapping_uuid, shard_id))
    views = []
    for shard_id, raw in zip(shard_ids, pipe.execute(), strict=True):
        lease = {_text(name): _text(value) for name, value in raw.items()}
        age = lease.get("age_ms")
        views.append(
            ShardView(
                shard_id=shard_id,
                owner=lease.get("owner"),
                checkpoint=lease.get("checkpoint"),
                ended=lease.get("ended") == "1",
                iterator_age_seconds=int(age) / 1000 if age is not None and lease.get("owner") else None,
                parents=tuple(lease.get("parents", "").split()),
            )
        )
    return views


def _owned(flat: list[Any]) -> dict[str, OwnedShard]:
    owned = {}
    for index in range(0, len(flat), 4):
        shard_id, token, checkpoint, start = (_text(value) for value in flat[index : index + 4])
        owned[shard_id] = OwnedShard(shard_id, int(token), checkpoint or None, start == "trim_horizon")
    return owned


def _pairs(flat: list[Any]) -> list[tuple[str, str]]:
    return [(_text(flat[index]), _text(flat[index + 1])) for index in range(0, len(flat), 2)]


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
