"""Event sources: one module each, registered on import; this package imports them all."""

from __future__ import annotations

import importlib
import pkgutil

from broker.sources.base import SourceKind, kind_of, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SourceKind", "kind_of", "register"]
