"""`headwater worker`, contributed to the command line by the worker side.

pyproject.toml declares `register` in the `headwater.commands` entry point group; `broker.cli` finds
it through importlib.metadata, so the broker side never imports this package. The pool itself is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from broker.cli.common import METRICS_HELP, Parser, command
from broker.config import Config, load_config
from broker.errors import HeadwaterError

if TYPE_CHECKING:
    from broker.cli.common import Commands


def register(commands: Commands, common: Parser) -> None:
    worker = command(commands, common, "worker", _worker, "run a worker pool that drains the invocation queue")
    processes_help = "worker processes, each running one invocation at a time (default: 1)"
    worker.add_argument("--processes", type=int, default=1, help=processes_help)
    worker.add_argument("--functions", help="comma-separated names of the functions to serve (default: all)")
    grace_help = (
        "after SIGTERM, time the running invocations get to finish; a worker still running 10 s later is "
        "killed and its jobs return to the queue (default: 30; a supervisor's stop timeout must be longer)"
    )
    worker.add_argument("--grace-seconds", type=float, default=30.0, help=grace_help)
    prefetch_help = "jobs a process claims ahead when there is a backlog (default: 8)"
    worker.add_argument("--prefetch", type=int, default=8, help=prefetch_help)
    worker.add_argument("--metrics-port", type=int, default=None, help=METRICS_HELP)


def _worker(args: argparse.Namespace) -> int:
    from workers.pool import Pool

    config = load_config(args.config)
    Pool(
        config,
        args.redis_url,
        processes=args.processes,
        function_names=function_names(config, args.functions),
        grace_seconds=args.grace_seconds,
        prefetch=args.prefetch,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
    ).run()
    return 0


def function_names(config: Config, selection: str | None) -> list[str] | None:
    """The functions `--functions` names (None: all), each checked against the configuration."""
    if not selection:
        return None
    names = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = sorted(set(names) - {f.function_name for f in config.functions})
    if unknown:
        raise HeadwaterError(f"--functions names unknown function(s): {', '.join(unknown)}")
    return names
