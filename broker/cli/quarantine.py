"""`headwater quarantine list|requeue|drop`: the jobs no worker could decode (poison jobs)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from broker.cli.common import Command, Parser, command, connected

if TYPE_CHECKING:
    from broker.cli.common import Commands
    from broker.queue import InvocationQueue

PAST_TENSE = {"requeue": "requeued", "drop": "dropped"}


def register(commands: Commands, common: Parser) -> None:
    described = "list, requeue or drop jobs no worker could decode (poison jobs)"
    quarantine = commands.add_parser("quarantine", help=described, description=described, parents=[common])
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = command(actions, common, "list", _list, "list quarantined jobs and why", config=False)
    listing.add_argument("--output", choices=["table", "json"], default="table")
    for verb, help_text in (
        ("requeue", "put quarantined jobs back at the back of their function's queue"),
        ("drop", "delete quarantined jobs for good"),
    ):
        sub = command(actions, common, verb, _action(verb), help_text, config=False)
        sub.add_argument("job_ids", nargs="*", metavar="JOB_ID")
        sub.add_argument("--all", action="store_true", help="every job in quarantine")


def _queue(args: argparse.Namespace) -> InvocationQueue:
    from broker.queue import InvocationQueue

    return InvocationQueue(connected(args))


def _list(args: argparse.Namespace) -> int:
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


def _action(verb: str) -> Command:
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
            elif job is not None and action(job.function_name, job_id):
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
