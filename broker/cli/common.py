"""What every subcommand module shares: how a command is declared, the global options, a checked Redis.

A command module exposes `register(commands, common)`, which adds its subcommands with `command`; a
subcommand's handler takes the parsed arguments and returns the exit code. Packages other than
`broker` contribute commands the same way, through the `headwater.commands` entry point group (the
worker pool does), so this package never imports them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.connection import connect
from broker.settings import DEFAULT_REDIS_URL, LOG_LEVELS, Settings, variable

if TYPE_CHECKING:
    from redis import Redis

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # what `add_subparsers` returns; no public name

Command = Callable[[argparse.Namespace], int]
Parser = argparse.ArgumentParser
Register = Callable[["Commands", Parser], None]

METRICS_HELP = "serve Prometheus /metrics and /healthz on this port (default: not served)"
CONNECT_TIMEOUT_SECONDS = 5.0


def command(
    under: Commands, common: Parser, name: str, handler: Command, help_text: str, *, config: bool = True
) -> Parser:
    """Add subcommand `name`, running `handler`; it takes the global options and, unless told not
    to, `--config`."""
    sub = under.add_parser(name, help=help_text, description=help_text, parents=[common])
    sub.set_defaults(handler=handler, usage_error=sub.error)
    if config:
        sub.add_argument("--config", help="the configuration file (YAML or JSON) (default: $HEADWATER_CONFIG)")
    return sub


def global_options(parser: Parser, defaults: Settings | None) -> None:
    """The options every command takes, before or after its name. Only the top-level parser holds
    `defaults` (the environment's); a command's own copy stays unset unless given, so it never hides
    a value given earlier."""
    default_url = defaults.redis_url if defaults else argparse.SUPPRESS
    default_level = defaults.log_level if defaults else argparse.SUPPRESS
    url_help = f"the Redis to use (default: ${variable('redis_url')}, else {DEFAULT_REDIS_URL})"
    parser.add_argument("--redis-url", default=default_url, help=url_help)
    level_help = f"log level (default: ${variable('log_level')}, else INFO)"
    parser.add_argument("--log-level", default=default_level, type=str.upper, choices=LOG_LEVELS, help=level_help)


def connected(args: argparse.Namespace) -> Redis:
    """A client for `--redis-url` that has answered a PING, so an unreachable Redis fails up front."""
    redis = connect(args.redis_url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
    redis.ping()
    return redis
