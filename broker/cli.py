"""`headwater`'s command line: the operator's edge. Nothing here holds logic of its own.

Every failure reaches the operator as one line and exit code 2, never a traceback: a `HeadwaterError`
as its Lambda code and message (configuration errors list every problem with its path), an
unreachable Redis as where it was looked for and how to point elsewhere, a Redis that refuses writes
(`OOM`, `READONLY`...) as a throttle (`TooManyRequestsException`), since the same call succeeds once it
accepts them again. A Redis URL is printed only through `redacted`, so no password reaches a terminal
or a CI log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker import __version__, logs, payload
from broker.config import DEFAULT_REDIS_URL, Config, load_config, redis_url
from broker.connection import connect, redacted, refuses_writes, scrubbed
from broker.errors import HeadwaterError, TooManyRequests
from broker.model import InvocationType

if TYPE_CHECKING:
    from redis import Redis

    from broker.queue import InvocationQueue

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # what `add_subparsers` returns; no public name

Command = Callable[[argparse.Namespace], int]
Parser = argparse.ArgumentParser

DESCRIPTION = """\
Headwater runs Lambda-style Python handlers with Lambda's asynchronous invocation and event source
mappings (SQS, Kafka) on your own Redis. `validate` checks a configuration, `worker`, `poll` and `api`
run the long-lived processes, `invoke`, `status`, `mappings` and `quarantine` inspect and drive a running system."""
EPILOG = """\
environment: HEADWATER_REDIS_URL (the Redis every command uses, overridden by --redis-url),
HEADWATER_CONFIG (the configuration file, overridden by --config), HEADWATER_LOG_LEVEL, HEADWATER_API_KEYS_FILE (`api`).
Errors are one line on stderr and exit code 2."""
METRICS_HELP = "serve Prometheus /metrics and /healthz on this port (default: not served)"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CONNECT_TIMEOUT_SECONDS = 5.0
PAST_TENSE = {"requeue": "requeued", "drop": "dropped"}


def _redis_problem(error: RedisError, url: str) -> str:
    if refuses_writes(error):
        return f"Redis at {redacted(url)} refuses writes ({error}); nothing was changed, try again later"
    if isinstance(error, (RedisConnectionError, RedisTimeoutError)):
        cause = error.__cause__ or error.__context__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(error).rstrip(".")
        return f"cannot reach Redis at {redacted(url)} ({reason}); set HEADWATER_REDIS_URL or --redis-url"
    return f"Redis at {redacted(url)} answered with an error: {error}"


def _connected(args: argparse.Namespace) -> Redis:
    """A client for `--redis-url` that has answered a PING, so an unreachable Redis fails up front."""
    redis = connect(args.redis_url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
    redis.ping()
    return redis


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    mappings = ", ".join(f"{m.source_kind}→{m.function_name}" for m in config.event_source_mappings) or "none"
    print(f"ok: {len(config.functions)} function(s); event source mappings: {mappings}")
    return 0


def _invoke(args: argparse.Namespace) -> int:
    from broker.client import Client

    config = load_config(args.config)
    text = payload.read_argument(args.payload)
    client = Client(config, _connected(args))  # it turns a Redis refusing writes into TooManyRequests
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


def _worker(args: argparse.Namespace) -> int:
    from workers.pool import Pool

    config = load_config(args.config)
    names = _function_names(config, args.functions)
    Pool(
        config,
        args.redis_url,
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

    asyncio.run(Supervisor(args.config, args.redis_url, args.grace_seconds).serve(args.metrics_port))
    return 0


def _api(args: argparse.Namespace) -> int:
    from broker.api.server import ServerOptions, run

    keys_file = args.keys_file or os.environ.get("HEADWATER_API_KEYS_FILE") or None
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


def _mappings(args: argparse.Namespace) -> int:
    from broker.mapping_state import print_mappings

    redis = _connected(args)
    try:
        print_mappings(args.config, redis, as_json=args.json)
    finally:
        redis.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    """Where every function's jobs are and how each mapping fares, read from Redis (no daemon asked)."""
    from broker.mapping_state import mapping_status

    config = load_config(args.config)
    names = [f.function_name for f in config.functions]
    redis = _connected(args)
    try:
        queue = _queue_on(redis).status(names)
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


def _dev(args: argparse.Namespace) -> int:
    from broker.dev import run

    return run(keep_running=args.serve)


def _queue(args: argparse.Namespace) -> InvocationQueue:
    return _queue_on(_connected(args))


def _queue_on(redis: Redis) -> InvocationQueue:
    from broker.queue import InvocationQueue

    return InvocationQueue(redis)


def _quarantine_list(args: argparse.Namespace) -> int:
    jobs = [
        {
            "JobId": job.job_id,
            "FunctionName": job.function_name,
            "QuarantinedAt": datetime.fromtimestamp(job.quarantined_at, UTC).isoformat(timespec="seconds"),
            "HasData": job.has_data,
            "Reason": job.reason,
        }
        for job in _queue(args).quarantined()
    ]
    if args.output == "json":
        print(json.dumps({"QuarantinedJobs": jobs}, indent=2))
    elif not jobs:
        print("no jobs in quarantine")
    else:
        print(f"{'JOB ID':36}  {'FUNCTION':20}  {'QUARANTINED AT':25}  {'DATA':4}  REASON")
        for job in jobs:
            data = "yes" if job["HasData"] else "no"
            print(f"{job['JobId']:36}  {job['FunctionName']:20}  {job['QuarantinedAt']:25}  {data:4}  {job['Reason']}")
    return 0


def _quarantine_action(verb: str) -> Command:
    """`requeue` or `drop` the named quarantined jobs (or all of them), printing each one done.

    A job whose data is gone is never requeued (it could only come straight back). Exit code 1 when
    some named job was not acted on: not in quarantine (already handled, or a wrong id) or without data."""

    def act(args: argparse.Namespace) -> int:
        if bool(args.all) == bool(args.job_ids):
            args.usage_error("give the JOB_IDs to act on, or --all (not both)")
        queue = _queue(args)
        listed = {job.job_id: job for job in queue.quarantined()}
        action = queue.requeue_quarantined if verb == "requeue" else queue.drop_quarantined
        skipped: dict[str, list[str]] = {"not in quarantine": [], "no data to requeue, drop it instead": []}
        for job_id in list(listed) if args.all else args.job_ids:
            job = listed.get(job_id)
            if verb == "requeue" and job is not None and not job.has_data:
                skipped["no data to requeue, drop it instead"].append(job_id)
            elif action(job_id):
                print(f"{PAST_TENSE[verb]} {job_id} ({job.function_name if job else 'function unknown'})")
            else:
                skipped["not in quarantine"].append(job_id)
        if args.all and not listed:
            print("no jobs in quarantine")
        for why, job_ids in skipped.items():
            if job_ids:
                print(f"headwater: {why}: {', '.join(job_ids)}", file=sys.stderr)
        return 1 if any(skipped.values()) else 0

    return act


def _function_names(config: Config, selection: str | None) -> list[str] | None:
    if not selection:
        return None
    names = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = sorted(set(names) - {f.function_name for f in config.functions})
    if unknown:
        raise HeadwaterError(f"--functions names unknown function(s): {', '.join(unknown)}")
    return names


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name. Only the top-level parser holds
    defaults; a command's own copy stays unset unless given, so it never hides a value given earlier."""
    default_url = redis_url() if defaults else argparse.SUPPRESS
    default_level = os.environ.get("HEADWATER_LOG_LEVEL", "INFO").upper() if defaults else argparse.SUPPRESS
    url_help = f"the Redis to use (default: $HEADWATER_REDIS_URL, else {DEFAULT_REDIS_URL})"
    parser.add_argument("--redis-url", default=default_url, help=url_help)
    level_help = "log level (default: $HEADWATER_LOG_LEVEL, else INFO)"
    parser.add_argument("--log-level", default=default_level, type=str.upper, choices=LOG_LEVELS, help=level_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(commands, common, "validate", _validate, "check a configuration file and print every error at once")
    _add_invoke(_command(commands, common, "invoke", _invoke, "invoke a function, as `aws lambda invoke` does"))
    _add_worker(_command(commands, common, "worker", _worker, "run a worker pool that drains the invocation queue"))
    _add_poll(_command(commands, common, "poll", _poll, "run the pollers of every enabled event source mapping"))
    _add_api(_command(commands, common, "api", _api, "serve Lambda's HTTP API (boto3, the AWS CLI, any AWS SDK)"))
    described = "show each event source mapping as Lambda describes it, with its state"
    mappings = _command(commands, common, "mappings", _mappings, described)
    mappings.add_argument("--json", action="store_true", help="Lambda's EventSourceMappingConfiguration JSON")
    described = "per function: queued, running, scheduled retries, quarantined; live workers; each mapping's state"
    status = _command(commands, common, "status", _status, described)
    status.add_argument("--output", choices=["table", "json"], default="table", help="(default: table)")
    _add_quarantine(commands, common)
    described = "run a private Redis (not --redis-url), a worker and example invocations, and show the outcomes"
    dev = _command(commands, common, "dev", _dev, described, config=False)
    dev.add_argument("--serve", action="store_true", help="keep the stack running after the demonstration")
    return parser


def _command(
    under: Commands, common: Parser, name: str, handler: Command, help_text: str, *, config: bool = True
) -> Parser:
    sub = under.add_parser(name, help=help_text, description=help_text, parents=[common])
    sub.set_defaults(handler=handler, usage_error=sub.error)
    if config:
        sub.add_argument("--config", help="the configuration file (YAML or JSON) (default: $HEADWATER_CONFIG)")
    return sub


def _add_invoke(invoke: Parser) -> None:
    invoke.add_argument("function_name", metavar="NAME")
    invoke.add_argument("--payload", default="{}", help="JSON text, or file://PATH")
    invoke.add_argument("--invocation-type", default="RequestResponse", choices=[t.value for t in InvocationType])
    invoke.add_argument("--client-context", help="base64 JSON, passed to the handler on RequestResponse")


def _add_worker(worker: Parser) -> None:
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


def _add_poll(poll: Parser) -> None:
    poll.add_argument("--metrics-port", type=int, default=None, help=METRICS_HELP)
    grace_help = "after SIGTERM, time in-flight batches get to settle; the rest come back from the source (default: 30)"
    poll.add_argument("--grace-seconds", type=float, default=30.0, help=grace_help)


def _add_api(api: Parser) -> None:
    api.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")  # noqa: S104
    api.add_argument("--port", type=int, default=8080, help="the API's port (default: 8080)")
    keys_help = "access keys accepted, ACCESS_KEY_ID:SECRET_ACCESS_KEY per line (default: $HEADWATER_API_KEYS_FILE)"
    api.add_argument("--keys-file", help=keys_help)
    api.add_argument("--no-auth", action="store_true", help="accept unsigned requests (local use only; logs a warning)")
    api.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM), with --tls-key")
    api.add_argument("--tls-key", help="the certificate's private key (PEM)")
    api.add_argument("--metrics-port", type=int, default=None, help=METRICS_HELP)
    api.add_argument("--grace-seconds", type=float, default=30.0, help="time requests in flight get after SIGTERM")


def _add_quarantine(commands: Commands, common: Parser) -> None:
    described = "list, requeue or drop jobs no worker could decode (poison jobs)"
    quarantine = commands.add_parser("quarantine", help=described, description=described, parents=[common])
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = _command(actions, common, "list", _quarantine_list, "list quarantined jobs and why", config=False)
    listing.add_argument("--output", choices=["table", "json"], default="table")
    for verb, help_text in (
        ("requeue", "put quarantined jobs back at the back of their function's queue"),
        ("drop", "delete quarantined jobs for good"),
    ):
        sub = _command(actions, common, verb, _quarantine_action(verb), help_text, config=False)
        sub.add_argument("job_ids", nargs="*", metavar="JOB_ID")
        sub.add_argument("--all", action="store_true", help="every job in quarantine")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # only a bad $HEADWATER_LOG_LEVEL gets here: argparse checked the flag
        parser.error(f"HEADWATER_LOG_LEVEL: invalid choice {args.log_level!r} (choose from {', '.join(LOG_LEVELS)})")
    logs.configure(args.log_level)
    try:
        return int(args.handler(args))
    except HeadwaterError as error:
        reason = f" (Reason: {error.reason})" if isinstance(error, TooManyRequests) else ""
        problem = f"{error.code}: {error.message}{reason}"
        if isinstance(error.__cause__, RedisError) and not isinstance(error, TooManyRequests):
            problem = _redis_problem(error.__cause__, args.redis_url)
    except RedisError as error:
        problem = _redis_problem(error, args.redis_url)
    except KeyboardInterrupt:
        return 130
    print(f"headwater: {scrubbed(problem, args.redis_url)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
