"""A mapping's `SourceAccessConfigurations`, turned into aiokafka's security settings.

On Lambda every URI names a Secrets Manager secret. Self-hosted, the secret may live elsewhere,
so a URI is one of:

- `file:///etc/headwater/kafka.json`: a file, typically a mounted Kubernetes Secret;
- `env:KAFKA_CREDENTIALS`: an environment variable (12-factor);
- `arn:aws:secretsmanager:...`: read from Secrets Manager, exactly as Lambda does.

The secret is the JSON Lambda expects: `{"username", "password"}` for BASIC_AUTH (SASL/PLAIN) and
SASL_SCRAM_256_AUTH / SASL_SCRAM_512_AUTH; `{"certificate", "privateKey", "privateKeyPassword"?}`
(PEM) for CLIENT_CERTIFICATE_TLS_AUTH; `{"certificate"}` (PEM) for SERVER_ROOT_CA_CERTIFICATE.
The protocol follows: SASL runs over TLS (SASL_SSL), as Lambda requires; certificates alone mean
SSL; nothing means PLAINTEXT. VPC entries describe Lambda's networking and do not apply here.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import ConfigError

if TYPE_CHECKING:
    from broker.mapping import SourceAccessConfiguration

SASL_MECHANISMS = {
    "BASIC_AUTH": "PLAIN",
    "SASL_SCRAM_256_AUTH": "SCRAM-SHA-256",
    "SASL_SCRAM_512_AUTH": "SCRAM-SHA-512",
}
TLS_TYPES = frozenset({"CLIENT_CERTIFICATE_TLS_AUTH", "SERVER_ROOT_CA_CERTIFICATE"})


async def client_settings(configurations: Sequence[SourceAccessConfiguration], aws_session: Any) -> dict[str, Any]:
    """aiokafka keyword arguments (security_protocol, sasl_*, ssl_context) for these configurations."""
    secrets: dict[str, dict[str, Any]] = {}
    for configuration in configurations:
        if configuration.type in SASL_MECHANISMS or configuration.type in TLS_TYPES:
            secrets[configuration.type] = await read_secret(configuration.uri, aws_session)
    sasl = [kind for kind in secrets if kind in SASL_MECHANISMS]  # one at most: KafkaKind's rules
    if not secrets:
        return {"security_protocol": "PLAINTEXT"}
    settings: dict[str, Any] = {"security_protocol": "SSL", "ssl_context": _ssl_context(secrets)}
    if sasl:
        credentials = secrets[sasl[0]]
        settings.update(
            security_protocol="SASL_SSL",
            sasl_mechanism=SASL_MECHANISMS[sasl[0]],
            sasl_plain_username=_field(credentials, "username", sasl[0]),
            sasl_plain_password=_field(credentials, "password", sasl[0]),
        )
    return settings


async def read_secret(uri: str, aws_session: Any) -> dict[str, Any]:
    """The JSON object a URI names (file://, env: or a Secrets Manager ARN)."""
    if uri.startswith("file://"):
        text = _read_file(Path(uri.removeprefix("file://")))
    elif uri.startswith("env:"):
        name = uri.removeprefix("env:")  # a variable the user named, not one of Headwater's settings
        if name not in os.environ:
            raise ConfigError([f"SourceAccessConfigurations: environment variable {name} is not set"])
        text = os.environ[name]
    elif uri.startswith("arn:") and ":secretsmanager:" in uri:
        text = await _read_secrets_manager(uri, aws_session)
    else:
        forms = "file://PATH, env:NAME or a Secrets Manager ARN"
        raise ConfigError([f"SourceAccessConfigurations: URI {uri!r} must be {forms}"])
    try:
        secret = json.loads(text)
    except ValueError:
        secret = None
    if not isinstance(secret, dict):
        raise ConfigError([f"SourceAccessConfigurations: the secret at {uri!r} is not a JSON object"])
    return secret


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"SourceAccessConfigurations: cannot read {path}: {error.strerror}"]) from None


async def _read_secrets_manager(arn: str, aws_session: Any) -> str:
    if aws_session is None:
        raise ConfigError([f"SourceAccessConfigurations: no AWS session to read {arn}"])
    region = arn.split(":")[3] or None
    try:
        async with aws_session.client("secretsmanager", region_name=region) as client:
            answer = await client.get_secret_value(SecretId=arn)
    except (BotoCoreError, ClientError) as error:
        raise ConfigError([f"SourceAccessConfigurations: cannot read {arn}: {error}"]) from None
    return str(answer.get("SecretString", ""))


def _ssl_context(secrets: dict[str, dict[str, Any]]) -> ssl.SSLContext:
    """Trust the given root CA (else the system's), and present a client certificate when given one."""
    root = secrets.get("SERVER_ROOT_CA_CERTIFICATE")
    cadata = _field(root, "certificate", "SERVER_ROOT_CA_CERTIFICATE") if root else None
    context = ssl.create_default_context(cadata=cadata)
    client = secrets.get("CLIENT_CERTIFICATE_TLS_AUTH")
    if client:
        _load_client_certificate(context, client)
    return context


def _load_client_certificate(context: ssl.SSLContext, secret: dict[str, Any]) -> None:
    """ssl loads a certificate chain only from files: write them to a private directory, then forget it."""
    kind = "CLIENT_CERTIFICATE_TLS_AUTH"
    certificate, key = _field(secret, "certificate", kind), _field(secret, "privateKey", kind)
    with tempfile.TemporaryDirectory(prefix="headwater-tls-") as directory:
        certfile, keyfile = Path(directory, "certificate.pem"), Path(directory, "key.pem")
        certfile.write_text(certificate)
        keyfile.write_text(key)
        try:
            context.load_cert_chain(certfile, keyfile, password=secret.get("privateKeyPassword"))
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError([f"SourceAccessConfigurations: {kind}: unusable certificate or key ({error})"]) from None


def _field(secret: dict[str, Any], name: str, kind: str) -> str:
    value = secret.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError([f"SourceAccessConfigurations: the {kind} secret needs a non-empty {name!r}"])
    return value
