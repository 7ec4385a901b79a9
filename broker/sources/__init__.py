"""Event sources: one package each (`broker.sources.NAME`), registered on import; this package imports
them all.

Importing a source package registers its kind (its `kind` module: how a mapping is recognised, its
defaults and rules), which the mapping model needs and which loads no SDK, so `headwater validate`
never imports aiokafka or botocore. The running side of a source, with its SDK, lives in the package's
`source` module and is imported by `runtime_for` only when a mapping of that kind is run or described.
`shards` is not a source: it is the machinery sharded stream sources (Kinesis, DynamoDB Streams) share.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from broker.sources import base
from broker.sources.base import Source, SourceKind, kind_of, register

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

NOT_SOURCES = frozenset({"base", "shards"})
RUNTIME_MODULE = "source"  # where a source package keeps its running side


def runtime_for(mapping: EventSourceMapping) -> type[Source] | None:
    """The running side of the mapping's source, its module (and SDK) imported now; None when its
    package has none yet (a kind Headwater validates but does not poll)."""
    package = _package_of(kind_of(mapping))
    runtime = f"{package}.{RUNTIME_MODULE}"
    try:
        importlib.import_module(runtime)
    except ModuleNotFoundError as error:
        if error.name != runtime:  # a missing SDK or a broken import inside the runtime is a real error
            raise
    return base.runtime_for(mapping)


def _package_of(kind: type[SourceKind]) -> str:
    """`broker.sources.kafka` for a kind defined anywhere inside that package."""
    return ".".join(kind.__module__.split(".")[: len(__name__.split(".")) + 1])


for _module in pkgutil.iter_modules(__path__):
    if _module.name not in NOT_SOURCES:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Source", "SourceKind", "kind_of", "register", "runtime_for"]
