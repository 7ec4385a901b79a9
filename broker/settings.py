"""Headwater's own environment variables, parsed once per process, at the edge.

Every `HEADWATER_*` variable Headwater reads is a field of `Settings`: its name is `HEADWATER_` and
the field's name in upper case (`HEADWATER_REDIS_URL`, `HEADWATER_CONFIG`, `HEADWATER_LOG_LEVEL`,
`HEADWATER_API_KEYS_FILE`, `HEADWATER_KAFKA_BOOTSTRAP_SERVERS`, `HEADWATER_KAFKA_CONSUMER_OPTIONS`,
`HEADWATER_SHARD_LEASE_SECONDS`, `HEADWATER_COMMIT`); an empty variable counts as unset. Code reads them through
`get_settings()` and never through `os.environ`. Variables that belong to a library keep their
library's names and are read by it (`AWS_*` by botocore, `PROMETHEUS_MULTIPROC_DIR` by
prometheus-client), and so do the variables a user names in a mapping (`env:NAME` secrets).

A variable that does not parse is reported like a configuration error, naming it and what is wrong,
never echoing a value that may hold a secret. Where it stops depends on who reads it:

- a process-wide variable (the Redis URL, the log level...) stops the process at start:
  `get_settings()` raises `SettingsError`, which the CLI prints as one line, exit code 2;
- a per-source variable (`HEADWATER_KAFKA_CONSUMER_OPTIONS`) stops only the mappings of that source:
  it is kept as `Unusable`, and `usable()` raises the `ConfigError` that disables each such mapping
  (State `Disabled`, with the reason) while every other mapping runs.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from broker.errors import ConfigError

PREFIX = "HEADWATER_"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
SOURCE = "environment"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
# Fields whose value may be repeated in an error: none of them can hold a password or a token.
SHOWN_VALUES = frozenset({"log_level", "shard_lease_seconds"})
T = TypeVar("T")


class SettingsError(ConfigError):
    """One or more `HEADWATER_*` variables are invalid; the process cannot start. Its message is one
    line: each variable's name and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, SOURCE)
        self.message = f"{SOURCE}: {'; '.join(problems)}"
        self.args = (self.message,)


@dataclass(frozen=True)
class Unusable:
    """A per-source variable that did not parse: the mappings of the sources that read it are
    disabled with this reason (`usable`), while the process and every other mapping run."""

    variable: str
    problem: str


class Settings(BaseSettings):
    """Headwater's environment variables: `HEADWATER_` + each field's name in upper case."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_ignore_empty=True, frozen=True, use_attribute_docstrings=True
    )

    redis_url: str = DEFAULT_REDIS_URL
    """The Redis every command and process uses (`redis://`, `rediss://`, `unix://`,
    `redis+sentinel://`, or `redis+cluster://host:port[,host:port...]` for a Redis Cluster: see
    `broker.connection`); `--redis-url` overrides it."""
    config: Path | None = None
    """The configuration file (YAML or JSON); `--config` overrides it."""
    log_level: LogLevel = "INFO"
    """The log level (any case); `--log-level` overrides it."""
    api_keys_file: Path | None = None
    """`headwater api`: the access keys accepted (`ACCESS_KEY_ID:SECRET_ACCESS_KEY` per line);
    `--keys-file` overrides it."""
    kafka_bootstrap_servers: str | None = None
    """The Kafka cluster (`host:port,...`) of MSK mappings (their ARNs are not resolved) and of
    `kafka://` destinations that are not on a self-managed mapping's own cluster."""
    kafka_consumer_options: Annotated[dict[str, Any] | Unusable, NoDecode] = Field(default_factory=dict)
    """A JSON object of extra aiokafka consumer arguments for every Kafka mapping
    (`{"session_timeout_ms": 6000}`); a bad one disables the Kafka mappings only."""
    shard_lease_seconds: Annotated[float, Field(gt=0)] | None = None
    """How long a Kinesis or DynamoDB Streams shard lease lasts before another poller replica may take
    the shard over (default: the shards source's own, 10 s)."""
    commit: str | None = None
    """The git commit this build of Headwater came from (set by the image build: deploy/Dockerfile's
    REVISION), shown as `headwater_build_info{commit}`; "unknown" when unset."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if urlsplit(url).scheme.lower() not in REDIS_SCHEMES:
            schemes = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
            raise ValueError(f"must be a Redis URL (one of {schemes})")
        return url

    @field_validator("kafka_consumer_options", mode="plain")
    @classmethod
    def _json_object(cls, value: object) -> dict[str, Any] | Unusable:
        """Kept apart instead of raised: only the Kafka mappings depend on it (see the module docstring)."""
        name = variable("kafka_consumer_options")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:  # the text is never repeated: it may hold a SASL password
                return Unusable(name, f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})")
        if not isinstance(value, dict):
            return Unusable(name, f"must be a JSON object of aiokafka consumer options (got {type(value).__name__})")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment only (and arguments, in tests): no `.env` file, no secrets directory."""
        return init_settings, env_settings


def variable(field: str) -> str:
    """The environment variable of a `Settings` field, for messages: `HEADWATER_` + its name."""
    if field not in Settings.model_fields:
        raise KeyError(f"Settings has no field {field!r}")
    return PREFIX + field.upper()


def get_settings() -> Settings:
    """This process's settings, parsed on first use; `SettingsError` when a variable is invalid.

    The environment does not change under a running process, so they are parsed once. The cache is
    keyed on the `HEADWATER_*` variables all the same, so a test that sets one sees it."""
    return _parsed(tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith(PREFIX))))


@functools.lru_cache(maxsize=1)
def _parsed(environment: tuple[tuple[str, str], ...]) -> Settings:
    """`environment` is the cache key only: `Settings()` reads the same variables from `os.environ`."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError([_describe(problem) for problem in error.errors()]) from None


def usable(value: T | Unusable) -> T:
    """`value`, or the `ConfigError` that disables a mapping reading a per-source variable that did not parse."""
    if isinstance(value, Unusable):
        raise ConfigError([f"{value.variable}: {value.problem}"], SOURCE)
    return value


def _describe(problem: Any) -> str:
    field = str(problem["loc"][0]) if problem["loc"] else ""
    name = variable(field) if field in Settings.model_fields else PREFIX + "*"
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{name}: {message} (got {problem['input']!r})" if field in SHOWN_VALUES else f"{name}: {message}"
