"""One enabled mapping inside the poller process: start its source, poll it, record its states.

`Creating` while the source is checked (a refusal, such as a function timeout above the queue's
visibility timeout, ends in `Disabled` with the reason; an unreachable source is retried), then
`Enabled` while polling. `disable()` passes through `Disabling` (in-flight batches settle) to
`Disabled`. A poller that crashes on an unexpected error is logged with its traceback, counted,
and restarted with backoff: one broken mapping never stops the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import metrics
from broker.backoff import RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS, Backoff
from broker.config import Function, HeadwaterOptions
from broker.destinations.base import DeliveryContext
from broker.destinations.dispatcher import Dispatcher
from broker.errors import ConfigError, SourceError
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.mapping_state import MappingStates, ProcessingResult, State
from broker.poller import Poller
from broker.sender import Sender
from broker.sources import Source, kind_of, runtime_for
from broker.sources.base import Lingering, SourceContext
from broker.stopping import wait_or_timeout

if TYPE_CHECKING:
    from redis import asyncio as redis_async

log = get_logger(__name__)


@dataclass(frozen=True)
class Services:
    """What every mapping of the process shares."""

    options: HeadwaterOptions
    sender: Sender
    states: MappingStates
    redis: redis_async.Redis
    aws_session: Any
    delivery: DeliveryContext
    lingering: Lingering  # stopped sources' clean-up, awaited before the process exits


class MappingRunner:
    def __init__(self, mapping: EventSourceMapping, function: Function, services: Services) -> None:
        self.mapping = mapping
        self.function = function
        self._services = services
        self._stopping = asyncio.Event()
        self._disabling = False
        self._disabled = False
        self._poller: Poller | None = None

    @property
    def in_flight(self) -> int:
        return self._poller.in_flight if self._poller is not None else 0

    def stop(self) -> None:
        """Stop reading; batches in flight finish. The mapping stays Enabled (a process restart)."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.stop()

    async def disable(self) -> None:
        """The mapping was turned off: Disabling now, Disabled once its batches have settled."""
        if not self._disabling:
            self._disabling = True
            await self._services.states.transition(self.mapping, State.DISABLING)
        self.stop()

    async def run(self) -> None:
        source_class = runtime_for(self.mapping)
        if source_class is None:
            reason = (
                f"ESM_CONFIG_NOT_VALID: this Headwater has no poller for {kind_of(self.mapping).label} "
                "event sources yet"
            )
            log.error("event source mapping cannot run", mapping=self.mapping.uuid, reason=reason)
            await self._services.states.transition(self.mapping, State.DISABLED, reason)
            return
        await self._services.states.transition(self.mapping, State.CREATING)
        refusal = await self._run_until_stopped(source_class)
        if refusal is not None:
            reason = f"FUNCTION_CONFIG_NOT_VALID: {'; '.join(refusal.problems)}"
            log.error("event source mapping refused", mapping=self.mapping.uuid, reason=reason)
            await self._services.states.transition(self.mapping, State.DISABLED, reason)
        elif self._disabling:
            await self._mark_disabled()
        if refusal is not None or self._disabling:  # it polls no more: no last-poll time that ages into an alert
            metrics.forget_mapping(self.mapping.uuid, keep_info=True)

    async def _mark_disabled(self) -> None:
        """Disabled, once: as soon as the batches settled (before the source's own clean-up)."""
        if not self._disabled:
            self._disabled = True
            await self._services.states.transition(self.mapping, State.DISABLED)

    async def _run_until_stopped(self, source_class: type[Source]) -> ConfigError | None:
        """Poll, restarting after crashes, until stopped; or return what the source refused."""
        crashes = Backoff(RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS)
        while not self._stopping.is_set():
            try:
                await self._run_once(source_class(self.mapping, self._source_context()))
            except ConfigError as refusal:
                return refusal
            except Exception:  # a bug or an unforeseen failure: keep the other mappings running
                metrics.POLLER_CRASHES.labels(self.mapping.uuid, self.mapping.source_kind).inc()
                log.exception("poller crashed; restarting", mapping=self.mapping.uuid, crashes=crashes.attempts + 1)
                await wait_or_timeout(self._stopping, crashes.next())
        return None

    async def _run_once(self, source: Source) -> None:
        # A kind may write where this mapping's source lives (a Kafka mapping's `kafka://` on-failure topic).
        dispatcher = Dispatcher(dataclasses.replace(self._services.delivery, mapping=self.mapping))
        try:
            if not await self._start(source):
                return
            await self._services.states.transition(self.mapping, State.ENABLED)
            await self._services.states.processing_result(self.mapping, ProcessingResult.NONE)
            self._poller = Poller(
                self.mapping,
                self.function,
                source,
                sender=self._services.sender,
                send=dispatcher.send,
                options=self._services.options,
                report=self._report,
            )
            if self._stopping.is_set():
                self._poller.stop()
            await self._poller.run()
        finally:
            self._poller = None
            if self._disabling:  # its batches settled and it reads no more; what is left is the source's cleanup
                await self._mark_disabled()
            await source.stop()  # an SQS receive in flight may take its long poll to come back and be handed back
            await dispatcher.close()

    async def _start(self, source: Source) -> bool:
        """Start the source, retrying while it cannot be reached; False when stopped meanwhile."""
        unreachable = Backoff(RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS)
        while not self._stopping.is_set():
            try:
                await source.start()
            except SourceError as error:
                log.warning("event source unreachable; retrying", mapping=self.mapping.uuid, error=str(error))
                await wait_or_timeout(self._stopping, unreachable.next())
            else:
                return True
        return False

    async def _report(self, result: ProcessingResult) -> None:
        await self._services.states.processing_result(self.mapping, result)

    def _source_context(self) -> SourceContext:
        options = self._services.options
        return SourceContext(
            aws_session=self._services.aws_session,
            region=options.region,
            function_timeout_seconds=self.function.timeout,
            account_id=options.account_id,
            extras={"redis": self._services.redis},  # where sharded sources keep their shard leases
            lingering=self._services.lingering,
        )
