"""SigV4 verified server-side: botocore-signed requests pass; a wrong secret, an unknown key, a body
changed after signing, a stale date and a missing signature are refused with AWS's codes. Keys rotate
by editing the keys file, without a restart."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.api import sigv4
from broker.api.errors import ApiError
from tests.api.conftest import KEY_ID, REGION, ROTATED_KEY_ID, ROTATED_SECRET, SECRET, ApiStack, write_keys

INVOKE_PATH = "/2015-03-31/functions/echo/invocations"


def _signed(api: ApiStack, body: bytes, *, signed_at: datetime | None = None, secret: str = SECRET) -> AWSRequest:
    """A request signed exactly as botocore signs it, at `signed_at` (default: now)."""
    request = AWSRequest(method="POST", url=api.endpoint + INVOKE_PATH, data=body)
    signer = SigV4Auth(Credentials(KEY_ID, secret), "lambda", REGION)
    moment = (signed_at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = moment
    request.context["timestamp"] = moment
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    request.headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{moment[:8]}/{REGION}/lambda/aws4_request, "
        f"SignedHeaders={';'.join(signer.headers_to_sign(request))}, Signature={signature}"
    )
    return request


def _send(api: ApiStack, request: AWSRequest, body: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    raw = urllib.request.Request(api.endpoint + INVOKE_PATH, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(raw, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())


def test_a_request_signed_by_hand_with_botocore_passes(api: ApiStack) -> None:
    body = b'{"signed": true}'
    status, _, answer = _send(api, _signed(api, body), body)
    assert (status, answer) == (200, {"echo": {"signed": True}})


def test_a_body_changed_after_signing_is_refused(api: ApiStack) -> None:
    request = _signed(api, b'{"amount": 1}')
    status, headers, answer = _send(api, request, b'{"amount": 9}')
    assert (status, headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")
    assert str(answer["message"]).startswith("The request signature we calculated does not match")


def test_a_request_older_than_five_minutes_is_refused(api: ApiStack) -> None:
    body = b"{}"
    status, headers, answer = _send(api, _signed(api, body, signed_at=datetime.now(UTC) - timedelta(minutes=6)), body)
    assert (status, headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")
    assert str(answer["message"]).startswith("Signature expired: ")
    in_the_future = _signed(api, body, signed_at=datetime.now(UTC) + timedelta(minutes=6))
    assert _send(api, in_the_future, body)[0] == 403
    within_skew = _signed(api, body, signed_at=datetime.now(UTC) - timedelta(minutes=4))
    assert _send(api, within_skew, body)[0] == 200


def test_a_wrong_secret_is_invalid_signature(api: ApiStack) -> None:
    with pytest.raises(ClientError) as raised:
        api.client(secret="not-the-secret").invoke(FunctionName="echo")
    assert raised.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_an_unknown_key_is_unrecognized_client(api: ApiStack) -> None:
    with pytest.raises(ClientError) as raised:
        api.client(key_id="AKIDNOBODYKNOWS", secret=SECRET).list_functions()
    assert raised.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert raised.value.response["Error"]["Message"] == "The security token included in the request is invalid."


def test_no_signature_is_missing_authentication_token(api: ApiStack) -> None:
    status, headers, _ = _send(api, AWSRequest(method="POST", url=api.endpoint + INVOKE_PATH), b"{}")
    assert (status, headers["x-amzn-errortype"]) == (403, "MissingAuthenticationTokenException")
    assert headers["x-amzn-requestid"]


def test_a_malformed_authorization_header_is_incomplete_signature(api: ApiStack) -> None:
    request = AWSRequest(method="POST", url=api.endpoint + INVOKE_PATH)
    request.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=only-this"
    request.headers["X-Amz-Date"] = "20260101T000000Z"
    status, headers, _ = _send(api, request, b"{}")
    assert (status, headers["x-amzn-errortype"]) == (400, "IncompleteSignatureException")


def _error_code(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return None


def test_keys_rotate_by_editing_the_keys_file(api: ApiStack) -> None:
    rotated = api.client(key_id=ROTATED_KEY_ID, secret=ROTATED_SECRET)
    with pytest.raises(ClientError):
        rotated.list_functions()
    write_keys(api.keys_file, (KEY_ID, SECRET), (ROTATED_KEY_ID, ROTATED_SECRET))
    try:
        deadline = time.monotonic() + 10
        while (code := _error_code(rotated.list_functions)) is not None:
            assert code == "UnrecognizedClientException"
            assert time.monotonic() < deadline, "the new key was not picked up"
            time.sleep(0.2)
        assert api.client().list_functions()["Functions"]  # the old key still works during the rotation
    finally:
        write_keys(api.keys_file, (KEY_ID, SECRET))


def test_a_signed_content_hash_must_match_the_body(api: ApiStack) -> None:
    body = b'{"a": 1}'
    request = AWSRequest(method="POST", url=api.endpoint + INVOKE_PATH, data=body)
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"something else").hexdigest()
    SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", REGION).add_auth(request)
    status, headers, _ = _send(api, request, body)
    assert (status, headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")


_SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_QUERY_PART = st.text("abcAZ09-_.~%=+/ ", max_size=8)
_HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=16)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(_SEGMENT, max_size=5),
    query=st.lists(st.tuples(_QUERY_PART, _QUERY_PART), max_size=4),
    extra=st.dictionaries(st.sampled_from(["x-amz-client-context", "x-custom", "content-type"]), _HEADER_VALUE),
    body=st.binary(max_size=64),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
)
def test_the_canonical_request_is_built_as_botocore_builds_it(
    segments: list[str], query: list[tuple[str, str]], extra: dict[str, str], body: bytes, method: str
) -> None:
    """The verifier builds the canonical request itself (for speed): any request botocore signs, with
    odd paths, queries, repeated keys and padded header values, verifies; the same with a different
    body does not."""
    path = "/" + "/".join(quote(segment, safe="") for segment in segments)
    query_string = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    request = AWSRequest(
        method=method, url=f"http://api.test:8080{path}" + (f"?{query_string}" if query_string else ""), data=body
    )
    for name, value in extra.items():
        request.headers[name] = value
    SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", REGION).add_auth(request)
    headers = [("host", "api.test:8080"), *((name.lower(), value.strip()) for name, value in request.headers.items())]

    def arrived(received: bytes) -> sigv4.SignedRequest:
        return sigv4.SignedRequest(method, path, query_string, headers, received)

    assert sigv4.verify(arrived(body), {KEY_ID: SECRET}.get) == KEY_ID
    with pytest.raises(ApiError) as refused:
        sigv4.verify(arrived(body + b"x"), {KEY_ID: SECRET}.get)
    assert refused.value.code == "InvalidSignatureException"
