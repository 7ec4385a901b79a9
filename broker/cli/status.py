"""`headwater status` and `headwater mappings`: what a running system is doing, read from Redis
(no daemon is asked)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from broker.cli.common import Parser, command, connected
from broker.config import load_config

if TYPE_CHECKING:
    from broker.cli.common import Commands


def register(commands: Commands, common: Parser) -> None:
    described = "show each event source mapping as Lambda describes it, with its state"
    mappings = command(commands, common, "mappings", _mappings, described)
    mappings.add_argument("--json", action="store_true", help="Lambda's EventSourceMappingConfiguration JSON")
    described = "per function: queued, running, scheduled retries, quarantined; live workers; each mapping's state"
    status = command(commands, common, "status", _status, described)
    status.add_argument("--output", choices=["table", "json"], default="table", help="(default: table)")


def _mappings(args: argparse.Namespace) -> int:
    from broker.mapping_state import print_mappings

    redis = connected(args)
    try:
        print_mappings(args.config, redis, as_json=args.json)
    finally:
        redis.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    """Where every function's jobs are and how each mapping fares."""
    from broker.mapping_state import mapping_status
    from broker.queue import InvocationQueue

    config = load_config(args.config)
    names = [f.function_name for f in config.functions]
    redis = connected(args)
    try:
        queue = InvocationQueue(redis).status(names)
        mapping_rows = mapping_status(args.config, config, redis)
    finally:
        redis.close()
    functions = [
        {
            "FunctionName": name,
            "Queued": queue.queued[name],
            "Running": queue.running[name],
            "ScheduledRetries": queue.scheduled[name],
            "Quarantined": queue.quarantined[name],
            "Workers": queue.workers_serving[name],
        }
        for name in names
    ]
    workers = {"Alive": queue.workers_alive, "LeaseExpired": queue.workers_expired}
    if args.output == "json":
        print(json.dumps({"Functions": functions, "Workers": workers, "EventSourceMappings": mapping_rows}, indent=2))
    else:
        _print_status(functions, workers, mapping_rows)
    return 0


def _print_status(functions: list[dict[str, Any]], workers: dict[str, int], mapping_rows: list[dict[str, Any]]) -> None:
    print(f"{'FUNCTION':24}  {'QUEUED':>8}  {'RUNNING':>8}  {'SCHEDULED':>9}  {'QUARANTINED':>11}  {'WORKERS':>7}")
    for row in functions:
        print(
            f"{row['FunctionName']:24}  {row['Queued']:>8}  {row['Running']:>8}  "
            f"{row['ScheduledRetries']:>9}  {row['Quarantined']:>11}  {row['Workers']:>7}"
        )
    print(f"\nworkers alive: {workers['Alive']}  (lease expired, jobs not yet handed back: {workers['LeaseExpired']})")
    if mapping_rows:
        print(f"\n{'MAPPING':36}  {'FUNCTION':20}  {'STATE':9}  {'SINCE':>8}  LAST PROCESSING RESULT")
        for m in mapping_rows:
            since, result = f"{m['SecondsInState']:.0f}s", m["LastProcessingResult"] or "-"
            print(f"{m['UUID']:36}  {m['FunctionName']:20}  {m['State']:9}  {since:>8}  {result}")
