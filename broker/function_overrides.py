"""Reserved concurrency and asynchronous-invocation settings set at run time, through the API.

They are a layer over the configuration file: a function's stored value, while there is one,
replaces the file's (an EventInvokeConfig as a whole, since Lambda's Put replaces it), and removing
it brings the file's value back. The file is never written: it stays what was deployed.

Workers consult the layer for every job, so it must be cheap: `OverridesView` keeps the layer in
memory and re-reads one generation counter at most once a second (every change bumps it in the
same transaction), reloading the two small hashes only when it moved. A change therefore applies
everywhere within about a second, and at once in the process that made it. This module is the only
one touching these keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from broker import keys
from broker.config import EventInvokeConfig, Function
from broker.errors import StoreUnavailable
from broker.logs import get_logger

REFRESH_SECONDS = 1.0
log = get_logger(__name__)


@dataclass(frozen=True)
class StoredInvokeConfig:
    """An EventInvokeConfig put through the API, and when (Lambda's LastModified)."""

    config: EventInvokeConfig
    modified_at: float

    def to_json(self) -> str:
        document = self.config.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return json.dumps({"Config": document, "ModifiedAt": self.modified_at})

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredInvokeConfig:
        record = json.loads(text)
        return cls(EventInvokeConfig.model_validate(record["Config"]), float(record["ModifiedAt"]))


@dataclass(frozen=True)
class Overrides:
    """The whole layer at one generation."""

    concurrency: Mapping[str, int] = field(default_factory=dict)
    event_invoke: Mapping[str, StoredInvokeConfig] = field(default_factory=dict)

    def apply(self, function: Function) -> Function:
        """`function` as the file defines it, with this layer's values in place of the file's."""
        name = function.function_name
        update: dict[str, object] = {}
        if name in self.concurrency:
            update["reserved_concurrent_executions"] = self.concurrency[name]
        if name in self.event_invoke:
            update["event_invoke_config"] = self.event_invoke[name].config
        return function.model_copy(update=update) if update else function


class FunctionOverrides:
    """The stored layer. Writes are transactions that also bump the generation."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def generation(self) -> int:
        return int(self.redis.get(keys.FUNCTION_OVERRIDES_GENERATION) or 0)

    def read(self) -> tuple[int, Overrides]:
        """The generation and the layer it names, read together."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(keys.FUNCTION_OVERRIDES_GENERATION)
        pipe.hgetall(keys.FUNCTION_CONCURRENCY)
        pipe.hgetall(keys.FUNCTION_EVENT_INVOKE_CONFIG)
        generation, concurrency, invoke_configs = pipe.execute()
        configs = {}
        for name, text in invoke_configs.items():
            try:
                configs[name.decode()] = StoredInvokeConfig.from_json(text)
            except ValueError as error:  # written by a newer release, or damaged: the file's applies
                log.error("stored EventInvokeConfig is not valid; ignored", function=name.decode(), error=str(error))
        reserved = {name.decode(): int(value) for name, value in concurrency.items()}
        return int(generation or 0), Overrides(reserved, configs)

    def concurrency(self, function_name: str) -> int | None:
        value = self.redis.hget(keys.FUNCTION_CONCURRENCY, function_name)
        return None if value is None else int(value)

    def put_concurrency(self, function_name: str, reserved: int) -> None:
        self._write(lambda pipe: pipe.hset(keys.FUNCTION_CONCURRENCY, function_name, reserved))

    def delete_concurrency(self, function_name: str) -> bool:
        """Remove the stored value (the file's applies again); False if there was none."""
        return bool(self._write(lambda pipe: pipe.hdel(keys.FUNCTION_CONCURRENCY, function_name)))

    def event_invoke_config(self, function_name: str) -> StoredInvokeConfig | None:
        text = self.redis.hget(keys.FUNCTION_EVENT_INVOKE_CONFIG, function_name)
        return None if text is None else StoredInvokeConfig.from_json(text)

    def put_event_invoke_config(self, function_name: str, stored: StoredInvokeConfig) -> None:
        self._write(lambda pipe: pipe.hset(keys.FUNCTION_EVENT_INVOKE_CONFIG, function_name, stored.to_json()))

    def delete_event_invoke_config(self, function_name: str) -> bool:
        return bool(self._write(lambda pipe: pipe.hdel(keys.FUNCTION_EVENT_INVOKE_CONFIG, function_name)))

    def _write(self, change: Callable[[Pipeline], object]) -> int:
        """Run `change` and bump the generation in one transaction; the change's own answer."""
        pipe = self.redis.pipeline(transaction=True)
        change(pipe)
        pipe.incr(keys.FUNCTION_OVERRIDES_GENERATION)
        answer, _ = pipe.execute()
        return int(answer)


class OverridesView:
    """The layer as one process sees it: re-checked at most every `refresh_seconds`.

    If Redis cannot be read, the last layer read stays in use (the next call tries again); with
    none read yet, `StoreUnavailable`."""

    def __init__(
        self,
        store: FunctionOverrides,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._layer: tuple[int, Overrides] | None = None  # one attribute: threads may share a view
        self._checked_at = float("-inf")

    def apply(self, function: Function) -> Function:
        return self.current().apply(function)

    def current(self) -> Overrides:
        if self._clock() - self._checked_at >= self._refresh_seconds:
            self._refresh()
        return self._layer[1] if self._layer is not None else Overrides()

    def invalidate(self) -> None:
        """Forget when the layer was last checked: this process just changed it."""
        self._checked_at = float("-inf")

    def _refresh(self) -> None:
        layer = self._layer
        try:
            if layer is None or self.store.generation() != layer[0]:
                self._layer = self.store.read()
        except RedisError as error:
            if layer is None:
                raise StoreUnavailable(
                    f"cannot read the functions' stored settings from Redis ({type(error).__name__})"
                ) from None
            log.warning("cannot re-read the functions' stored settings; keeping the last ones", error=str(error))
        self._checked_at = self._clock()
