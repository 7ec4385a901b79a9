"""`headwater`: validate a configuration, invoke functions, run worker pools, pollers and the dev stack.

Errors reach the user as one line naming what is wrong (a `HeadwaterError`'s message), exit 2;
configuration errors list every problem with its path. Nothing here holds logic of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence

from broker import logs, payload
from broker.config import Config, load_config, redis_url
from broker.errors import HeadwaterError
from broker.model import InvocationType

Command = Callable[[argparse.Namespace], int]


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    mappings = ", ".join(f"{m.source_kind}→{m.function_name}" for m in config.event_source_mappings) or "none"
    print(f"ok: {len(config.functions)} function(s); event source mappings: {mappings}")
    return 0


def _invoke(args: argparse.Namespace) -> int:
    from broker.client import Client

    config = load_config(args.config)
    text = payload.read_argument(args.payload)
    response = Client(config, redis_url()).invoke(
        args.function_name, text, args.invocation_type, client_context=args.client_context
    )
    answer: dict[str, object] = {"StatusCode": response.status_code, "RequestId": response.request_id}
    if response.executed_version:
        answer["ExecutedVersion"] = response.executed_version
    if response.function_error:
        answer["FunctionError"] = response.function_error
    if response.payload is not None:
        answer["Payload"] = response.json()
    print(json.dumps(answer, indent=2))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.pool import Pool

    config = load_config(args.config)
    names = _function_names(config, args.functions)
    Pool(
        config,
        redis_url(),
        processes=args.processes,
        function_names=names,
        grace_seconds=args.grace_seconds,
        prefetch=args.prefetch,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
    ).run()
    return 0


def _poll(args: argparse.Namespace) -> int:
    from broker.supervisor import Supervisor

    asyncio.run(Supervisor(args.config, redis_url(), args.grace_seconds).serve(args.metrics_port))
    return 0


def _mappings(args: argparse.Namespace) -> int:
    from broker.mapping_state import print_mappings

    print_mappings(args.config, redis_url(), as_json=args.json)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from broker.dev import run

    return run(keep_running=args.serve)


def _function_names(config: Config, selection: str | None) -> list[str] | None:
    if not selection:
        return None
    names = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = sorted(set(names) - {f.function_name for f in config.functions})
    if unknown:
        raise HeadwaterError(f"--functions names unknown function(s): {', '.join(unknown)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("HEADWATER_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        if name != "dev":
            sub.add_argument("--config", help="configuration file (default: $HEADWATER_CONFIG)")
        return sub

    command("validate", _validate, "check a configuration file and print every error at once")
    invoke = command("invoke", _invoke, "invoke a function, as `aws lambda invoke` does")
    invoke.add_argument("function_name", metavar="NAME")
    invoke.add_argument("--payload", default="{}", help="JSON text, or file://PATH")
    invoke.add_argument("--invocation-type", default="RequestResponse", choices=[t.value for t in InvocationType])
    invoke.add_argument("--client-context", help="base64 JSON, passed to the handler on RequestResponse")
    worker = command("worker", _worker, "run a worker pool that drains the invocation queue")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument("--functions", help="comma-separated function names (default: all)")
    worker.add_argument("--grace-seconds", type=float, default=30.0)
    worker.add_argument("--prefetch", type=int, default=8, help="jobs a process claims ahead under backlog")
    worker.add_argument("--metrics-port", type=int, default=None)
    poll = command("poll", _poll, "run the pollers of every enabled event source mapping")
    poll.add_argument("--metrics-port", type=int, default=None)
    poll.add_argument("--grace-seconds", type=float, default=30.0, help="time in-flight batches get to settle")
    mappings = command("mappings", _mappings, "show each event source mapping as Lambda describes it, with its state")
    mappings.add_argument("--json", action="store_true", help="Lambda's EventSourceMappingConfiguration JSON")
    dev = command("dev", _dev, "run a private Redis, a worker and example invocations, and show the outcomes")
    dev.add_argument("--serve", action="store_true", help="keep the stack running after the demonstration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        return int(args.handler(args))
    except HeadwaterError as error:
        print(f"headwater: {error.code}: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
