"""Real services for the test suite: Redis, moto (AWS), ElasticMQ (SQS), kinesalite (Kinesis) and
Kafka on loopback, plus the fault-injection rigs: Redis Sentinel (a primary, a replica, three Sentinels) and Toxiproxy.

Each rig starts a real server as a child process on a free 127.0.0.1 port
with its own temp dir, waits until it actually serves requests, and cleans
up after itself (see ``common``). tests/conftest.py wraps them in fixtures;
scripts/install-test-deps installs what they run.
"""

from .common import (
    INSTALL_COMMAND,
    PortInUseError,
    RigError,
    ServiceStartError,
    ServiceUnavailableError,
    cache_dir,
    free_port,
    free_ports,
)
from .elasticmq import ElasticMQServer, elasticmq_libs_dir
from .kafka import KafkaBroker, kafka_libs_dir
from .kinesalite import KinesaliteServer, kinesalite_dir
from .moto import MotoServer, aws_env
from .redis import RedisServer
from .sentinel import SentinelGroup, SentinelServer
from .toxiproxy import Latency, Proxy, ResetPeer, Timeout, ToxiproxyClient, ToxiproxyError, ToxiproxyServer

__all__ = [
    "INSTALL_COMMAND",
    "ElasticMQServer",
    "KafkaBroker",
    "KinesaliteServer",
    "Latency",
    "MotoServer",
    "PortInUseError",
    "Proxy",
    "RedisServer",
    "ResetPeer",
    "RigError",
    "SentinelGroup",
    "SentinelServer",
    "ServiceStartError",
    "ServiceUnavailableError",
    "Timeout",
    "ToxiproxyClient",
    "ToxiproxyError",
    "ToxiproxyServer",
    "aws_env",
    "cache_dir",
    "elasticmq_libs_dir",
    "free_port",
    "free_ports",
    "kafka_libs_dir",
    "kinesalite_dir",
]
