"""Signature Version 4, verified as AWS verifies it: the signature is recomputed and compared.

The canonical request is rebuilt from what arrived on the wire: the raw, still percent-encoded path
and query (the signer encodes the path once more, as every non-S3 service does), the headers the
client listed as signed, and the SHA-256 of the body actually received, so a body changed in transit
fails. A signed `X-Amz-Content-SHA256` must match that hash too. A request dated more than five
minutes from our clock is refused, which bounds how long a captured request can be replayed.

Refusals are AWS's: no header is `MissingAuthenticationTokenException`, a malformed one
`IncompleteSignatureException`, an unknown key `UnrecognizedClientException`, and a wrong secret,
an altered request, a wrong service or a stale date `InvalidSignatureException`.

The canonical request is built here, step for step as botocore's `SigV4Auth` builds it (its path
normalisation is reused; tests/api/test_auth.py checks both agree), rather than by botocore itself:
verifying is on every request's path, and botocore's request and header objects cost several times
the hashing. The body is hashed once, from the bytes received, every time; the signing key (four
HMACs of the secret, date, region and service) is derived once per key and day, not per request.
Only the headers the client listed are signed, as AWS checks them (botocore, as a client, never
signs `User-Agent` and a few others; another SDK may, and is accepted).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

from botocore.utils import normalize_url_path

from broker.api import errors

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "lambda"
MAX_SKEW = timedelta(minutes=5)
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)


@dataclass(frozen=True)
class SignedRequest:
    """What arrived, as the signer needs it: raw target, every header (lower-case names), body."""

    method: str
    raw_path: str
    query_string: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> Authorization:
    if value is None:
        raise errors.missing_authentication()
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise errors.incomplete_signature(f"Unsupported AWS 'algorithm': '{algorithm[:64]}'")
    parts = dict(item.strip().partition("=")[::2] for item in rest.split(","))
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not parts.get(name)]
    if missing:
        raise errors.incomplete_signature(" ".join(f"Authorization header requires '{n}' parameter." for n in missing))
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise errors.incomplete_signature(
            "Credential should be scoped to a valid region, like 'us-east-1', and a service, like 'lambda': "
            "ACCESS_KEY_ID/YYYYMMDD/REGION/lambda/aws4_request"
        )
    return Authorization(
        access_key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=tuple(parts["SignedHeaders"].lower().split(";")),
        signature=parts["Signature"],
    )


def verify(request: SignedRequest, secret_of: Callable[[str], str | None], now: datetime | None = None) -> str:
    """Check the request's signature; return the access key id that signed it, or raise `ApiError`."""
    authorization = parse_authorization(request.header("authorization"))
    secret = secret_of(authorization.access_key_id)
    if secret is None:
        raise errors.unrecognized_client()
    amz_date = _checked_date(request, authorization, now or datetime.now(UTC))
    if "host" not in authorization.signed_headers:
        raise errors.invalid_signature("'Host' must be a signed header.")
    expected = _recompute(request, authorization, secret, amz_date)
    if not hmac.compare_digest(expected.encode(), authorization.signature.encode("utf-8", "replace")):
        raise errors.invalid_signature()
    return authorization.access_key_id


def _checked_date(request: SignedRequest, authorization: Authorization, now: datetime) -> str:
    if authorization.service != SERVICE:
        raise errors.invalid_signature(f"Credential should be scoped to correct service: '{SERVICE}'.")
    amz_date = request.header("x-amz-date")
    if amz_date is None:
        raise errors.incomplete_signature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    signed_at = _parse_amz_date(amz_date)
    if signed_at is None:
        raise errors.incomplete_signature(f"Date must be in ISO-8601 'basic format': got '{amz_date[:32]}'")
    if authorization.date != amz_date[:8]:
        raise errors.invalid_signature(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{authorization.date[:16]}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if signed_at < now - MAX_SKEW:
        stamp = now.strftime(AMZ_DATE_FORMAT)
        earliest = (now - MAX_SKEW).strftime(AMZ_DATE_FORMAT)
        raise errors.invalid_signature(
            f"Signature expired: {amz_date} is now earlier than {earliest} ({stamp} - 5 min.)"
        )
    if signed_at > now + MAX_SKEW:
        stamp = now.strftime(AMZ_DATE_FORMAT)
        latest = (now + MAX_SKEW).strftime(AMZ_DATE_FORMAT)
        raise errors.invalid_signature(
            f"Signature not yet current: {amz_date} is still later than {latest} ({stamp} + 5 min.)"
        )
    return amz_date


def _recompute(request: SignedRequest, authorization: Authorization, secret: str, amz_date: str) -> str:
    """The signature a SigV4 client computes for this request with this secret."""
    signed = set(authorization.signed_headers)
    headers: dict[str, str] = {}
    for name, value in request.headers:  # a repeated header is signed as its values joined by commas
        if name in signed:
            trimmed = " ".join(value.split())  # SigV4's Trimall, applied to each value
            headers[name] = f"{headers[name]},{trimmed}" if name in headers else trimmed
    if set(headers) != signed:
        raise errors.invalid_signature()
    body_hash = hashlib.sha256(request.body).hexdigest()  # always: the body received is what was signed
    declared_hash = headers.get("x-amz-content-sha256")
    if declared_hash is not None and declared_hash != body_hash:
        raise errors.invalid_signature("The provided 'x-amz-content-sha256' header does not match what was computed.")
    target = request.raw_path + (f"?{request.query_string}" if request.query_string else "")
    try:
        parts = urlsplit(f"http://signed.invalid{target}")
        path = quote(normalize_url_path(parts.path), safe="/~")
    except (ValueError, UnicodeError):  # a target no client could have signed
        raise errors.invalid_signature() from None
    names = sorted(headers)
    canonical = "\n".join(
        (
            request.method.upper(),
            path,
            _canonical_query(parts.query),
            "".join(f"{name}:{headers[name]}\n" for name in names),
            ";".join(names),
            body_hash,
        )
    )
    scope = f"{authorization.date}/{authorization.region}/{SERVICE}/aws4_request"
    string_to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
    key = _signing_key(secret, authorization.date, authorization.region, SERVICE)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _canonical_query(query: str) -> str:
    """The query's `key=value` pairs sorted by key then value, still encoded as they arrived."""
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{key}={value}" for key, value in pairs)


@functools.lru_cache(maxsize=256)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """SigV4's derived key, HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")."""
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def _parse_amz_date(value: str) -> datetime | None:
    """`YYYYMMDDTHHMMSSZ` as a UTC time, or None (strptime costs more than the rest of the check)."""
    match = _AMZ_DATE.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
