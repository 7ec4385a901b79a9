"""Real services for the test suite: Redis, moto (AWS) and Kafka on loopback.

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
from .kafka import KafkaBroker, kafka_libs_dir
from .moto import MotoServer, aws_env
from .redis import RedisServer

__all__ = [
    "INSTALL_COMMAND",
    "KafkaBroker",
    "MotoServer",
    "PortInUseError",
    "RedisServer",
    "RigError",
    "ServiceStartError",
    "ServiceUnavailableError",
    "aws_env",
    "cache_dir",
    "free_port",
    "free_ports",
    "kafka_libs_dir",
]
