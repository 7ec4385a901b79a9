"""The one place a Redis client is made, so every process speaks to the store the same way.

`connect(url)` / `connect_async(url)` accept redis-py's own forms (`redis://`, `rediss://`,
`unix://`) and Redis Sentinel:

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db][?sentinel_password=...]

* the hosts are the Sentinels (port 26379 when left out); `service_name` is the name they
  monitor (`sentinel monitor <service_name> ...`), `db` the database number (default 0);
* `username`/`password` authenticate to the data nodes (primary and replicas), as in
  `redis://`; `sentinel_password` (and `sentinel_username`) to the Sentinels themselves, when
  they have `requirepass` set. Reserved characters in any of them are percent-encoded.

and Redis Cluster:

    redis+cluster://[[username]:password@]host[:port][,host[:port]...][/]

* the hosts are any primaries (or replicas) of the cluster to learn its slot map from (port 6379
  when left out); the client then talks to each slot's primary itself and follows MOVED/ASK
  redirections after a resharding or a failover. Every key of one function (and of one event source
  mapping) shares a hash tag (`broker.keys`), so each of Headwater's scripts and pipelined reads stays
  in one slot or is split by node. A cluster has one database (no `/db`), and durable mode (`WAIT`
  on one connection) is refused on it.

Callers never build clients themselves: timeouts, health checks and the discovery of the current
primary are decided here once. With Sentinel a client asks the Sentinels for the primary whenever
it (re)connects, so after a failover the *next* command after a failed one reaches the new primary:
a command in flight when the primary dies fails with `ConnectionError` (a demoted primary's
`READONLY` is turned into `ConnectionError` too), and the caller retries it, as it does for any
Redis outage.

Failover and durability: replication is asynchronous, so a write the old primary acknowledged but
had not yet sent to a replica is lost when that replica is promoted. `wait_for_replicas` (Redis
`WAIT`) closes that gap for the writes that matter (durable mode): once it returns N, N replicas
hold every write made before it on the same connection.

The store's failures are exported here under their own names, so a module that only catches them
(to retry, or to report a Redis fault) never imports redis itself:

    StoreError              every failure of a call to the store (redis-py's `RedisError`)
    ├── StoreConnectionError    unreachable, or the connection dropped (with Sentinel: a failover)
    ├── StoreTimeoutError       no answer in time
    ├── StoreOutOfMemoryError   `OOM`: maxmemory reached, writes refused (`refuses_writes`)
    └── StoreReadOnlyError      `READONLY`: a replica, writes refused (`refuses_writes`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import Redis
from redis import asyncio as redis_async
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from broker.errors import ConfigError

HEALTH_CHECK_SECONDS = 30
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_DEFAULT_PORT = 6379
SENTINEL_DEFAULT_PORT = 26379
# A Sentinel that hangs (frozen host, black-holed network) must not stall discovery: the next
# Sentinel in the list is asked instead.
SENTINEL_SOCKET_TIMEOUT_SECONDS = 2.0
_SENTINEL_QUERY_OPTIONS = frozenset({"sentinel_password", "sentinel_username"})

# The store's failures (see the module docstring): aliases, so `except StoreError` catches what redis-py raises.
StoreError = RedisError
StoreConnectionError = RedisConnectionError
StoreTimeoutError = RedisTimeoutError
StoreOutOfMemoryError = OutOfMemoryError
StoreReadOnlyError = ReadOnlyError
StoreScriptMissing = NoScriptError  # Redis lost its scripts (a restart): nothing of that call was written


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed `redis+sentinel://` URL: where the Sentinels are and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def data_node_options(self) -> dict[str, Any]:
        """Connection options for the primary (and replicas) the Sentinels point at."""
        return {"db": self.db, "username": self.username, "password": self.password}

    def sentinel_options(self, options: dict[str, Any], *, asynchronous: bool = False) -> dict[str, Any]:
        """Connection options for the Sentinels: their own credentials, the caller's socket timeouts."""
        timeouts = {key: value for key, value in options.items() if key.startswith("socket_")}
        timeouts.setdefault("socket_timeout", SENTINEL_SOCKET_TIMEOUT_SECONDS)
        timeouts.setdefault("socket_connect_timeout", SENTINEL_SOCKET_TIMEOUT_SECONDS)
        # No retries per Sentinel: discovery asks the next one at once, and the caller retries the command.
        once = AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)
        return {"username": self.sentinel_username, "password": self.sentinel_password, "retry": once, **timeouts}


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse the `redis+sentinel://` form documented above; `ConfigError` says what is wrong.

    The error never repeats the URL itself: it may hold a password.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise _bad_url(f"the scheme must be {SENTINEL_SCHEME}://")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_parse_host(host) for host in hostlist.split(","))
    path = [unquote(segment) for segment in parts.path.strip("/").split("/") if segment]
    if not path or len(path) > 2:
        raise _bad_url("the path must be /service_name or /service_name/db")
    if len(path) == 2 and not path[1].isdigit():
        raise _bad_url("the database number after the service name must be a non-negative integer")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - _SENTINEL_QUERY_OPTIONS)
    if unknown:
        known = ", ".join(sorted(_SENTINEL_QUERY_OPTIONS))
        raise _bad_url(f"unknown query option(s) {', '.join(unknown)}; known: {known}")
    return SentinelTarget(
        sentinels=sentinels,
        service_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


class SentinelBackedRedis(Redis):
    """A client of the current primary that also closes the Sentinel connections it found it through."""

    sentinel_clients: tuple[Redis, ...] = ()

    def close(self) -> None:
        super().close()
        for sentinel in self.sentinel_clients:
            sentinel.close()


class AsyncSentinelBackedRedis(redis_async.Redis):
    """The asyncio `SentinelBackedRedis`."""

    sentinel_clients: tuple[redis_async.Redis, ...] = ()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.sentinel_clients:
            await sentinel.aclose()


@dataclass(frozen=True)
class ClusterTarget:
    """A parsed `redis+cluster://` URL: the nodes to learn the slot map from, and the credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    return url.lower().startswith(CLUSTER_SCHEME + "://")


def is_cluster(client: object) -> bool:
    """Whether `client` talks to a Redis Cluster (keys of different slots may not meet in one command)."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse the `redis+cluster://` form documented above; `ConfigError` says what is wrong (never
    quoting the URL, which may hold a password)."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    if parts.path.strip("/") or parts.query:
        raise _bad_url("a cluster URL has no database number or query options", CLUSTER_SCHEME)
    nodes = tuple(_parse_host(host, CLUSTER_DEFAULT_PORT, CLUSTER_SCHEME) for host in hostlist.split(","))
    return ClusterTarget(nodes, unquote(username) or None, unquote(password) or None)


def _connect_cluster(url: str, options: dict[str, Any]) -> RedisCluster:
    target = parse_cluster_url(url)
    nodes = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call]  # untyped in redis-py
    return RedisCluster(startup_nodes=nodes, username=target.username, password=target.password, **options)


def _connect_cluster_async(url: str, options: dict[str, Any]) -> AsyncRedisCluster:
    from redis.asyncio.cluster import ClusterNode as AsyncClusterNode  # noqa: PLC0415 - same name as the sync one

    target = parse_cluster_url(url)
    nodes = [AsyncClusterNode(host, port) for host, port in target.nodes]
    return AsyncRedisCluster(startup_nodes=nodes, username=target.username, password=target.password, **options)


def connect(url: str, **options: Any) -> Redis:
    """A synchronous client for `url`; with Sentinel, one that always talks to the current primary;
    with a cluster, a `RedisCluster` (typed as `Redis`: it answers the same commands, per slot)."""
    options.setdefault("health_check_interval", HEALTH_CHECK_SECONDS)
    if is_cluster_url(url):
        return cast(Redis, _connect_cluster(url, options))
    if not is_sentinel_url(url):
        return Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    # redis.sentinel is untyped; master_for returns a client whose pool asks the Sentinels on connect.
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_options(options))  # type: ignore[no-untyped-call]
    client: SentinelBackedRedis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service_name, redis_class=SentinelBackedRedis, **target.data_node_options(), **options
    )
    client.sentinel_clients = tuple(sentinel.sentinels)
    return client


def connect_async(url: str, **options: Any) -> redis_async.Redis:
    """An asyncio client for `url`; with Sentinel, one that always talks to the current primary;
    with a cluster, an asyncio `RedisCluster` (typed as `Redis`, as in `connect`)."""
    options.setdefault("health_check_interval", HEALTH_CHECK_SECONDS)
    if is_cluster_url(url):
        return cast(redis_async.Redis, _connect_cluster_async(url, options))
    if not is_sentinel_url(url):
        return redis_async.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel = AsyncSentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_options(options, asynchronous=True)
    )  # type: ignore[no-untyped-call]
    client: AsyncSentinelBackedRedis = sentinel.master_for(
        target.service_name, redis_class=AsyncSentinelBackedRedis, **target.data_node_options(), **options
    )
    client.sentinel_clients = tuple(sentinel.sentinels)
    return client


def wait_for_replicas(client: Redis, replicas: int, timeout_ms: int) -> int:
    """Block until `replicas` replicas hold this connection's writes (or `timeout_ms` passed); return how many do.

    Redis `WAIT` counts only the writes made on the connection that sends it, so `client` must be
    the very connection that wrote: a single-connection client (`redis.client()` pins one from the
    pool) used for the writes and then for this call. On a pooled client `WAIT` could leave on an
    idle connection that wrote nothing and report success at once; that is refused with `ValueError`.
    A result below `replicas` means the writes may not survive a failover (they are on the primary).
    """
    if replicas < 0 or timeout_ms < 0:
        raise ValueError(f"replicas and timeout_ms must be >= 0 (got {replicas}, {timeout_ms})")
    if client.connection is None:
        raise ValueError("wait_for_replicas needs the client that wrote, bound to one connection (redis.client())")
    return int(client.wait(replicas, timeout_ms))


def _parse_host(text: str, default_port: int = SENTINEL_DEFAULT_PORT, scheme: str = SENTINEL_SCHEME) -> tuple[str, int]:
    host, port = text, ""
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    what = "Sentinel" if scheme == SENTINEL_SCHEME else "cluster node"
    if not host:
        raise _bad_url(f"every {what} needs a host (host[:port], comma-separated)", scheme)
    if port and not port.isdigit():
        raise _bad_url(f"{what} port {port!r} of {host} is not a number", scheme)
    return host, int(port) if port else default_port


def _bad_url(reason: str, scheme: str = SENTINEL_SCHEME) -> ConfigError:
    if scheme == CLUSTER_SCHEME:
        expected = f"{CLUSTER_SCHEME}://[:password@]host:port[,host:port...]"
    else:
        expected = f"{SENTINEL_SCHEME}://[:password@]host:port[,host:port...]/service_name[/db]"
    return ConfigError([f"{reason} (expected {expected})"], "Redis URL")


# -- what may be printed, and what an error means --------------------------------------------------
# Redis alive but not accepting writes now (the same write succeeds later): the refusals redis-py has a
# class for (it strips their prefix from the message), then the prefixes of those it has none for.
REFUSAL_CLASSES = (OutOfMemoryError, ReadOnlyError, BusyLoadingError, MasterDownError, TryAgainError)
REFUSAL_PREFIXES = ("MISCONF", "NOREPLICAS", "BUSY")
_PASSWORD_IN_QUERY = re.compile(r"(?i)((?:^|&)[a-z_]*password=)[^&]*")


def redacted(url: str) -> str:
    """`url` fit to print: a password in its user part or its query (`?password=`) becomes `***`."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}" if at and ":" in userinfo else parts.netloc
    query = _PASSWORD_IN_QUERY.sub(r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def scrubbed(text: str, url: str) -> str:
    """`text` with `url` redacted and any password it carries masked, wherever it was quoted."""
    text = text.replace(url, redacted(url))
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    secrets = [userinfo.split(":", 1)[1]] if at and ":" in userinfo else []
    secrets += [match.group(0).split("=", 1)[1] for match in _PASSWORD_IN_QUERY.finditer(parts.query)]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def refuses_writes(error: RedisError) -> bool:
    """True when Redis answered but will not take writes now (memory full, a replica, loading...)."""
    return isinstance(error, REFUSAL_CLASSES) or (
        isinstance(error, ResponseError) and str(error).startswith(REFUSAL_PREFIXES)
    )
