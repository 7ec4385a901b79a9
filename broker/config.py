"""The one configuration model, read by the config file, the CLI and the Python client alike.

Field names are Lambda's own (`FunctionName`, `EventInvokeConfig`, ...) so a Lambda user recognises
them; Python code reads them in snake_case. Unknown keys are errors: a typo must never be silently
ignored. Connection settings come from the environment (12-factor, `broker.settings`), never from the
shared file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from broker import destinations
from broker.errors import ConfigError
from broker.mapping import EventSourceMapping
from broker.schema import DestinationTarget, Model
from broker.settings import get_settings, variable

HANDLER_PATTERN = re.compile(r"^[A-Za-z_][\w]*(?:[./][A-Za-z_]\w*)*[.:][A-Za-z_]\w*$")
ENVIRONMENT_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Destination(Model):
    destination: DestinationTarget = None


class DestinationConfig(Model):
    on_success: Destination = Destination()
    on_failure: Destination = Destination()


class EventInvokeConfig(Model):
    maximum_retry_attempts: Annotated[int, Field(ge=0, le=2)] = 2
    maximum_event_age_in_seconds: Annotated[int, Field(ge=60, le=21600)] = 21600
    destination_config: DestinationConfig = DestinationConfig()


class DeadLetterConfig(Model):
    target_arn: DestinationTarget = None


class Environment(Model):
    variables: dict[str, str] = Field(default_factory=dict)


class Function(Model):
    function_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    handler: str
    timeout: Annotated[int, Field(ge=1, le=900)] = 3
    memory_size: Annotated[int, Field(ge=128, le=10240)] = 128
    environment: Environment = Environment()
    reserved_concurrent_executions: Annotated[int, Field(ge=0)] | None = None
    dead_letter_config: DeadLetterConfig = DeadLetterConfig()
    event_invoke_config: EventInvokeConfig = EventInvokeConfig()

    @field_validator("handler")
    @classmethod
    def _handler_shape(cls, value: str) -> str:
        if not HANDLER_PATTERN.match(value):
            raise ValueError("must be 'package.module.function' (as Lambda writes it) or 'package.module:function'")
        return value

    @property
    def module_and_attribute(self) -> tuple[str, str]:
        """Split the handler string; `/` in the module path becomes `.`, as Lambda's runtime does."""
        if ":" in self.handler:
            module, attribute = self.handler.rsplit(":", 1)
        else:
            module, attribute = self.handler.rsplit(".", 1)
        return module.replace("/", "."), attribute


class HeadwaterOptions(Model):
    """Headwater's own knobs; Lambda has no name for them. Delays are short-able for tests.

    `SandboxEnvironmentPassThrough` names the worker's environment variables that every handler
    sandbox gets too (names only, default none). A sandbox otherwise holds only Lambda's reserved
    variables and its function's `Environment.Variables`: the worker's credentials and Headwater's
    own settings (`HEADWATER_*`, the Redis URL) reach a handler only when listed here.
    """

    async_retry_delays_seconds: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=2)] = Field(
        default_factory=lambda: [60.0, 120.0]
    )
    throttle_backoff_initial_seconds: Annotated[float, Field(gt=0)] = 1.0
    throttle_backoff_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    destination_retry_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    # How long a silent worker is trusted before its jobs are handed to others (a dead worker's
    # invocations wait at most this long, plus a few seconds, before they run again).
    worker_heartbeat_ttl_seconds: Annotated[float, Field(ge=2)] = 15.0
    # Durable mode: an accepted invocation is acknowledged to its caller only once Redis's WAIT
    # confirms that this many replicas hold it, so a failover cannot lose it (0: off).
    durable_replicas: Annotated[int, Field(ge=0)] = 0
    durable_wait_timeout_ms: Annotated[int, Field(ge=1)] = 1000
    # Worker variables handed to handlers by name (e.g. [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]).
    sandbox_environment_pass_through: list[Annotated[str, Field(pattern=ENVIRONMENT_NAME)]] = Field(
        default_factory=list
    )
    region: str = "us-east-1"
    account_id: Annotated[str, Field(pattern=r"^\d{12}$")] = "000000000000"


class Config(Model):
    functions: list[Function] = Field(default_factory=list)
    event_source_mappings: list[EventSourceMapping] = Field(default_factory=list)
    headwater: HeadwaterOptions = HeadwaterOptions()

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        names = [function.function_name for function in self.functions]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"FunctionName must be unique; repeated: {', '.join(duplicated)}")
        known = set(names)
        for mapping in self.event_source_mappings:
            if mapping.function_name not in known:
                raise ValueError(
                    f"EventSourceMappings: FunctionName {mapping.function_name!r} is not one of the Functions "
                    f"({', '.join(sorted(known)) or 'none defined'})"
                )
        for function in self.functions:
            self._check_function_destinations(function, known)
        return self

    @staticmethod
    def _check_function_destinations(function: Function, known: set[str]) -> None:
        config = function.event_invoke_config.destination_config
        for target in (config.on_success.destination, config.on_failure.destination):
            target_function = destinations.function_name_of(target) if target else None
            if target_function is not None and target_function not in known:
                raise ValueError(
                    f"Functions: {function.function_name}: destination {target!r} names an unknown function"
                )

    def function(self, name: str) -> Function | None:
        return next((f for f in self.functions if f.function_name == name), None)


def parse_config(document: Any, source: str = "configuration") -> Config:
    """Validate a parsed document, reporting every problem at once with its path, value and rule."""
    if document is None:
        document = {}
    try:
        return Config.model_validate(document)
    except ValidationError as error:
        raise ConfigError([_describe(problem) for problem in error.errors()], source) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load from `path`, else `$HEADWATER_CONFIG`; YAML syntax errors name the line."""
    file = config_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"cannot read {file}: {error.strerror}"], str(file)) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"not valid YAML: {_where(error)}"], str(file)) from None
    return parse_config(document, str(file))


def config_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file: `path` (`--config`), else `$HEADWATER_CONFIG`; `ConfigError` when neither is given."""
    chosen = path or get_settings().config
    if not chosen:
        raise ConfigError([f"no configuration: pass --config PATH or set {variable('config')}"])
    return Path(chosen)


def _where(error: yaml.YAMLError) -> str:
    """The YAML problem and its position, never the offending text: it may hold a secret value."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or "syntax error"
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _describe(problem: Any) -> str:
    """One line per problem. Values of `Environment.Variables` are often secrets: they are never
    echoed, whether the problem is in them or they are part of a larger value being reported."""
    path = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    message = problem["msg"]
    if problem["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against Lambda's field names)"
    if problem["type"] == "missing":
        return f"{path}: required"
    value = _hide_variables(problem.get("input"), inside="Environment" in problem["loc"])
    if value is _HIDDEN:
        return f"{path}: {message} (value hidden: Environment.Variables may hold secrets)"
    return f"{path}: {message} (got {value!r})"


class _Hidden:
    def __repr__(self) -> str:
        return "<hidden>"


_HIDDEN = _Hidden()


def _hide_variables(value: Any, inside: bool) -> Any:
    """`value` with every scalar under an `Environment` key replaced: keys stay, values go."""
    if isinstance(value, dict):
        return {key: _hide_variables(item, inside or key == "Environment") for key, item in value.items()}
    if isinstance(value, list):
        return [_hide_variables(item, inside) for item in value]
    return _HIDDEN if inside else value
