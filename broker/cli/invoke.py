"""`headwater invoke`: one invocation, answered as `aws lambda invoke` answers it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from broker import payload
from broker.cli.common import Parser, command, connected
from broker.config import load_config
from broker.invocation import InvocationType

if TYPE_CHECKING:
    from broker.cli.common import Commands


def register(commands: Commands, common: Parser) -> None:
    invoke = command(commands, common, "invoke", _invoke, "invoke a function, as `aws lambda invoke` does")
    invoke.add_argument("function_name", metavar="NAME")
    invoke.add_argument("--payload", default="{}", help="JSON text, or file://PATH")
    invoke.add_argument("--invocation-type", default="RequestResponse", choices=[t.value for t in InvocationType])
    invoke.add_argument("--client-context", help="base64 JSON, passed to the handler on RequestResponse")


def _invoke(args: argparse.Namespace) -> int:
    from broker.client import Client

    config = load_config(args.config)
    text = payload.read_argument(args.payload)
    client = Client(config, connected(args))  # it turns a Redis refusing writes into TooManyRequests
    response = client.invoke(args.function_name, text, args.invocation_type, client_context=args.client_context)
    answer: dict[str, object] = {"StatusCode": response.status_code, "RequestId": response.request_id}
    if response.executed_version:
        answer["ExecutedVersion"] = response.executed_version
    if response.function_error:
        answer["FunctionError"] = response.function_error
    if response.payload is not None:
        answer["Payload"] = response.json()
    print(json.dumps(answer, indent=2))
    return 0
