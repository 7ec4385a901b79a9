"""`headwater`'s command line: the operator's edge, a thin face over both sides. Nothing here holds
logic of its own.

Each group of subcommands is one module with a `register(commands, common)` function. Other packages
add theirs through the `headwater.commands` entry point group (the `workers` package adds `worker`),
so `broker` never imports `workers`. A subcommand imports what it runs only when it runs, so
`headwater validate` loads neither the worker nor any source or destination SDK.

Every failure reaches the operator as one line and exit code 2, never a traceback: an invalid
`HEADWATER_*` variable (`broker.settings`) before anything runs, a `HeadwaterError`
as its Lambda code and message (configuration errors list every problem with its path), an
unreachable Redis as where it was looked for and how to point elsewhere, a Redis that refuses writes
(`OOM`, `READONLY`...) as a throttle (`TooManyRequestsException`), since the same call succeeds once it
accepts them again. A Redis URL is printed only through `redacted`, so no password reaches a terminal
or a CI log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import cast

from broker import __version__, logs
from broker.cli import dev, invoke, quarantine, services, status, validate
from broker.cli.common import Parser, Register, global_options
from broker.cli.failures import STORE_ERRORS, problem
from broker.connection import scrubbed
from broker.errors import HeadwaterError
from broker.settings import Settings, SettingsError, get_settings, variable

COMMANDS_GROUP = "headwater.commands"
DESCRIPTION = """\
Headwater runs Lambda-style Python handlers with Lambda's asynchronous invocation and event source
mappings (SQS, Kafka) on your own Redis. `validate` checks a configuration, `worker`, `poll` and `api`
run the long-lived processes, `invoke`, `status`, `mappings` and `quarantine` inspect and drive a running system."""
EPILOG = (
    f"environment: {', '.join(variable(field) for field in Settings.model_fields)}; --redis-url, --config, "
    "--log-level and --keys-file override theirs. Errors are one line on stderr and exit code 2."
)


def contributed() -> list[Register]:
    """The `register` functions other installed packages declare in the `headwater.commands` group."""
    found = sorted(entry_points(group=COMMANDS_GROUP), key=lambda entry: entry.name)
    return [cast("Register", entry.load()) for entry in found]


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line, its defaults taken from `settings` (else this process's environment)."""
    parser = argparse.ArgumentParser(prog="headwater", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    global_options(parser, settings or get_settings())
    common = Parser(add_help=False)
    global_options(common, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Contributed commands (`worker`) come right after `invoke`, where the help has always listed them.
    for register in (
        validate.register,
        invoke.register,
        *contributed(),
        services.register,
        status.register,
        quarantine.register,
        dev.register,
    ):
        register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser(get_settings())
    except SettingsError as error:  # a HEADWATER_* variable is invalid: nothing runs (it never holds a value shown)
        print(f"headwater: {error.code}: {error.message}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        return int(args.handler(args))
    except (HeadwaterError, *STORE_ERRORS) as error:
        line = problem(error, args.redis_url)
    except KeyboardInterrupt:
        return 130
    print(f"headwater: {scrubbed(line, args.redis_url)}", file=sys.stderr)
    return 2
