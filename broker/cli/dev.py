"""`headwater dev`: the whole product on a private Redis, with the example functions."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from broker.cli.common import Parser, command

if TYPE_CHECKING:
    from broker.cli.common import Commands


def register(commands: Commands, common: Parser) -> None:
    described = "run a private Redis (not --redis-url), a worker and example invocations, and show the outcomes"
    dev = command(commands, common, "dev", _dev, described, config=False)
    dev.add_argument("--serve", action="store_true", help="keep the stack running after the demonstration")


def _dev(args: argparse.Namespace) -> int:
    from broker.dev import run

    return run(keep_running=args.serve)
