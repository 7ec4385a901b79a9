"""`headwater validate`: parse a configuration and report every problem at once.

It loads the model only: no Redis, and no source or destination SDK (tests/test_architecture.py
checks that aiokafka and botocore stay unloaded)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from broker.cli.common import Parser, command
from broker.config import load_config

if TYPE_CHECKING:
    from broker.cli.common import Commands


def register(commands: Commands, common: Parser) -> None:
    command(commands, common, "validate", _validate, "check a configuration file and print every error at once")


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    mappings = ", ".join(f"{m.source_kind}→{m.function_name}" for m in config.event_source_mappings) or "none"
    print(f"ok: {len(config.functions)} function(s); event source mappings: {mappings}")
    return 0
