"""A handler for the sandbox-weight test; it imports only `sys`, so what it reports is what the
sandbox itself loaded before the handler ran."""

from __future__ import annotations

import sys
from typing import Any


def loaded(event: Any, context: Any) -> dict[str, Any]:
    """The top-level packages loaded in the handler's process, and the arguments it was given."""
    return {"packages": sorted({name.split(".")[0] for name in sys.modules}), "argv": sys.argv}
