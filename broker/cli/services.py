"""`headwater poll` and `headwater api`: the long-lived processes of the broker side.

(`headwater worker` is contributed by the `workers` package, through the `headwater.commands`
entry point group.)"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from broker.cli.common import METRICS_HELP, Parser, command
from broker.settings import get_settings, variable

if TYPE_CHECKING:
    from broker.cli.common import Commands


def register(commands: Commands, common: Parser) -> None:
    poll = command(commands, common, "poll", _poll, "run the pollers of every enabled event source mapping")
    poll.add_argument("--metrics-port", type=int, default=None, help=METRICS_HELP)
    grace_help = "after SIGTERM, time in-flight batches get to settle; the rest come back from the source (default: 30)"
    poll.add_argument("--grace-seconds", type=float, default=30.0, help=grace_help)
    api = command(commands, common, "api", _api, "serve Lambda's HTTP API (boto3, the AWS CLI, any AWS SDK)")
    api.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")  # noqa: S104
    api.add_argument("--port", type=int, default=8080, help="the API's port (default: 8080)")
    keys_help = (
        f"access keys accepted, ACCESS_KEY_ID:SECRET_ACCESS_KEY per line (default: ${variable('api_keys_file')})"
    )
    api.add_argument("--keys-file", help=keys_help)
    api.add_argument("--no-auth", action="store_true", help="accept unsigned requests (local use only; logs a warning)")
    api.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM), with --tls-key")
    api.add_argument("--tls-key", help="the certificate's private key (PEM)")
    api.add_argument("--metrics-port", type=int, default=None, help=METRICS_HELP)
    api.add_argument("--grace-seconds", type=float, default=30.0, help="time requests in flight get after SIGTERM")


def _poll(args: argparse.Namespace) -> int:
    from broker.supervisor import Supervisor

    asyncio.run(Supervisor(args.config, args.redis_url, args.grace_seconds).serve(args.metrics_port))
    return 0


def _api(args: argparse.Namespace) -> int:
    from broker.api.server import ServerOptions, run

    keys_file = args.keys_file or get_settings().api_keys_file
    run(
        ServerOptions(
            config_path=args.config,
            redis_url=args.redis_url,
            host=args.host,
            port=args.port,
            keys_file=None if args.no_auth else keys_file,
            no_auth=args.no_auth,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            metrics_port=args.metrics_port,
            grace_seconds=args.grace_seconds,
        )
    )
    return 0
