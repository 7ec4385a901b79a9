"""Zero loss under a kill schedule: `Event` invocations and SQS messages flow while worker
processes, the poller and Redis itself are SIGKILLed, then every accepted event is accounted for.

    python bench/chaos.py [--events 20000] [--messages 5000] [--kill-every 3] [--outage 4]

Starts its own redis-server (AOF, fsync always) and SQS server (ElasticMQ, tests/rig: moto scans its
whole queue per message and cannot feed 5,000 waiting messages in reasonable time), two `headwater
worker` pools and one `headwater poll`. Producers accept events through the Python client and
send messages to SQS, retrying through outages. Meanwhile, every `--kill-every` seconds one
worker process is SIGKILLed (its pool restarts it); once, the poller is SIGKILLed and started
again; once, Redis is SIGKILLed, kept down `--outage` seconds (longer than the worker lease) and
restarted from its append-only file.

The handler (tests/handlers/faults.py) appends every run to a file outside Redis, so the counts
survive the faults: lost = accepted ids never seen to finish, duplicated = finished runs beyond
the first. Each kill prints what was in flight at that moment (the most it may duplicate);
goal: lost 0 and duplicated <= the sum of those. `--events 500 --messages 200` runs in < 1 min.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from redis import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import keys
from broker.client import Client
from broker.config import load_config
from broker.errors import HeadwaterError
from broker.invocation import InvocationType
from tests.faults.conftest import Runs
from tests.rig import ElasticMQServer, RedisServer, aws_env
from tests.rig.common import ManagedProcess

HANDLER = "tests.handlers.faults.run"
HEARTBEAT_TTL_SECONDS = 3
POOLS, PROCESSES, PREFETCH = 2, 2, 8
RETRY_PAUSE_SECONDS = 0.2
PROGRESS_EVERY_SECONDS = 0.5


@dataclass
class Chaos:
    """The processes under test, the producers' tallies, and the log of kills."""

    directory: Path
    redis_server: RedisServer
    config_path: Path
    queue_url: str
    pools: list[ManagedProcess] = field(default_factory=list)
    poller: ManagedProcess | None = None
    accepted_events: list[str] = field(default_factory=list)
    accepted_messages: list[str] = field(default_factory=list)
    kills: list[tuple[str, int]] = field(default_factory=list)  # (what, in flight at the kill)
    producing: threading.Event = field(default_factory=threading.Event)

    def spawn(self, name: str, *command: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "broker.cli", "--log-level", "WARNING", *command, "--config",
                str(self.config_path)]  # fmt: skip
        env = {**os.environ, "HEADWATER_REDIS_URL": self.redis_server.url, "PYTHONPATH": str(ROOT)}
        process = ManagedProcess(name, argv, self.directory / f"{name}.log", cwd=ROOT, env=env)
        process.start()
        return process

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_server.url, socket_timeout=2, socket_connect_timeout=2)

    # -- faults ---------------------------------------------------------------------------------
    def kill_a_worker(self) -> None:
        workers = [pid for pool in self.pools if pool.pid is not None for pid in _spawned_children(pool.pid)]
        if not workers:
            return
        victim = random.choice(workers)
        held = self._held_by(victim)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, 9)
        self._note(f"worker process {victim}", held)

    def kill_the_poller(self) -> None:
        assert self.poller is not None
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )
        held = int(attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"])
        self.poller.kill()
        self._note("poller", held)
        self.poller = self.spawn("poller-restarted", "poll", "--grace-seconds", "5")

    def kill_redis(self, outage_seconds: float) -> None:
        held = self._in_flight()
        self.redis_server.kill()
        self._note(f"redis (down {outage_seconds:.0f} s, AOF restart)", held)
        time.sleep(outage_seconds)
        self.redis_server.start()

    def _note(self, what: str, in_flight: int) -> None:
        self.kills.append((what, in_flight))
        print(f"  t={time.strftime('%H:%M:%S')} SIGKILL {what}: in flight {in_flight}", flush=True)

    def _held_by(self, pid: int) -> int:
        with contextlib.suppress(RedisError), self.redis() as redis:
            return sum(int(redis.llen(key)) for key in redis.scan_iter(f"{keys.PROCESSING_PREFIX}*:{pid}:*"))
        return 0

    def _in_flight(self) -> int:
        with contextlib.suppress(RedisError), self.redis() as redis:
            return sum(int(redis.llen(key)) for key in redis.scan_iter(keys.PROCESSING_PREFIX + "*"))
        return 0

    def pending(self) -> int | None:
        """Jobs still anywhere in Redis, or None while it cannot be asked."""
        try:
            with self.redis() as redis:
                queued = sum(int(redis.llen(key)) for key in redis.scan_iter(keys.RQ_QUEUE_KEY_PREFIX + "headwater.*"))
                held = sum(int(redis.llen(key)) for key in redis.scan_iter(keys.PROCESSING_PREFIX + "*"))
                return queued + held + sum(int(redis.zcard(key)) for key in redis.scan_iter(keys.scheduled("*")))
        except RedisError:
            return None

    # -- producers --------------------------------------------------------------------------------
    def produce_events(self, count: int) -> None:
        client = Client(load_config(self.config_path), self.redis_server.url)
        for n in range(count):
            identifier = f"e{n}"
            while not _attempt(lambda i=identifier: client.invoke("chaos", {"id": i}, InvocationType.EVENT)):
                time.sleep(RETRY_PAUSE_SECONDS)
            self.accepted_events.append(identifier)

    def produce_messages(self, count: int) -> None:
        sqs = boto3.client("sqs")
        for start in range(0, count, 10):
            ids = [f"m{n}" for n in range(start, min(count, start + 10))]
            entries = [{"Id": str(i), "MessageBody": f'{{"id": "{name}"}}'} for i, name in enumerate(ids)]
            answer = sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            self.accepted_messages += [ids[int(item["Id"])] for item in answer.get("Successful", [])]


def _attempt(call: Any) -> bool:
    """One producer call; False when the store refused or could not be reached (the caller retries)."""
    try:
        call()
    except (HeadwaterError, RedisError, OSError):
        return False
    return True


def _spawned_children(pid: int) -> list[int]:
    """A pool's worker processes: its children started by multiprocessing's spawn (not its helpers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    workers = []
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(int(child))
    return workers


def write_config(path: Path, runs_file: Path, queue_arn: str) -> None:
    environment = {"Variables": {"RUNS_FILE": str(runs_file)}}
    document = {
        "Functions": [
            {"FunctionName": "chaos", "Handler": HANDLER, "Timeout": 30, "Environment": environment},
            {"FunctionName": "chaos-sqs", "Handler": HANDLER, "Timeout": 30, "Environment": environment},
        ],
        "EventSourceMappings": [{"FunctionName": "chaos-sqs", "EventSourceArn": queue_arn, "BatchSize": 10}],
        "Headwater": {"AsyncRetryDelaysSeconds": [0.2, 0.2], "WorkerHeartbeatTtlSeconds": HEARTBEAT_TTL_SECONDS},
    }
    path.write_text(yaml.safe_dump(document))


def run_schedule(chaos: Chaos, runs: Runs, args: argparse.Namespace) -> None:
    """Kill a worker every `kill_every` s until everything accepted finished; the poller as soon as
    a quarter of the messages ran, Redis as soon as half of the events ran."""
    poller_killed = redis_killed = False
    started = time.monotonic()
    next_worker_kill = started + args.kill_every
    while time.monotonic() - started < args.timeout:
        time.sleep(PROGRESS_EVERY_SECONDS)
        finished = runs.count("end")
        events_done = sum(1 for identifier in chaos.accepted_events if finished[identifier])
        messages_done = sum(1 for identifier in chaos.accepted_messages if finished[identifier])
        if events_done >= args.events and messages_done >= args.messages and chaos.pending() == 0:
            return
        if not poller_killed and messages_done >= args.messages // 4:
            poller_killed = True
            chaos.kill_the_poller()
        if not redis_killed and events_done >= args.events // 2:
            redis_killed = True
            chaos.kill_redis(args.outage)
        if time.monotonic() >= next_worker_kill:
            next_worker_kill = time.monotonic() + args.kill_every
            print(f"  progress: events {events_done}/{args.events}, messages {messages_done}/{args.messages}")
            chaos.kill_a_worker()
    print(f"  gave up waiting after {args.timeout:.0f} s")


def summarize(chaos: Chaos, runs: Runs) -> None:
    finished = runs.count("end")
    bound = sum(in_flight for _, in_flight in chaos.kills)
    total_lost = total_duplicated = 0
    for kind, accepted in (("events", chaos.accepted_events), ("messages", chaos.accepted_messages)):
        distinct = Counter(accepted)
        lost = [identifier for identifier in distinct if not finished[identifier]]
        duplicated = sum(max(0, finished[identifier] - 1) for identifier in distinct)
        total_lost += len(lost)
        total_duplicated += duplicated
        example = f" e.g. {lost[:5]}" if lost else ""
        print(f"{kind:<9} accepted {len(distinct):>6,}  lost {len(lost):>5,}{example}  duplicated {duplicated:>5,}")
    print(f"kills: {len(chaos.kills)}; in flight at each: {[in_flight for _, in_flight in chaos.kills]} (sum {bound})")
    verdict = "ok" if total_lost == 0 and total_duplicated <= bound else "GOAL MISSED"
    print(f"lost {total_lost} (goal 0), duplicated {total_duplicated} (goal <= {bound}): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--outage", type=float, default=2 * HEARTBEAT_TTL_SECONDS, help="Redis downtime, seconds")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    random.seed(args.seed)
    directory = Path(tempfile.mkdtemp(prefix="headwater-chaos-"))
    runs = Runs(directory / "runs.jsonl")
    with RedisServer() as redis_server, ElasticMQServer() as sqs_server:
        os.environ.update(aws_env(sqs_server.endpoint_url))
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="chaos", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        config_path = directory / "headwater.yaml"
        write_config(config_path, runs.path, arn)
        chaos = Chaos(directory, redis_server, config_path, url)
        print(f"{args.events:,} events and {args.messages:,} SQS messages; {POOLS} pools x {PROCESSES} processes, "
              f"prefetch {PREFETCH}; logs in {directory}")  # fmt: skip
        try:
            chaos.pools = [chaos.spawn(f"pool-{n}", "worker", "--processes", str(PROCESSES), "--prefetch",
                                       str(PREFETCH), "--grace-seconds", "5") for n in range(POOLS)]  # fmt: skip
            chaos.poller = chaos.spawn("poller", "poll", "--grace-seconds", "5")
            producers = [
                threading.Thread(target=chaos.produce_events, args=(args.events,), daemon=True),
                threading.Thread(target=chaos.produce_messages, args=(args.messages,), daemon=True),
            ]
            for producer in producers:
                producer.start()
            run_schedule(chaos, runs, args)
            summarize(chaos, runs)
        finally:
            for process in [*chaos.pools, chaos.poller]:
                if process is not None:
                    process.stop(timeout=15)


if __name__ == "__main__":
    main()
