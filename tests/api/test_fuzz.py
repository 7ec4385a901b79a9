"""Property: whatever arrives (paths, headers, bodies), the API answers in Lambda's error language:
never a 5xx, never a traceback in the body, always a request id. Bounded: a few seconds.

The `--no-auth` process is fuzzed (so requests reach routing and the operations), and the signed one
with random Authorization headers (so they exercise the signature checks)."""

from __future__ import annotations

import http.client
from urllib.parse import quote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import ApiStack

PREFIXES = ["/2015-03-31/functions", "/2017-10-31/functions", "/2019-09-25/functions", "/2015-03-31", "", "/x"]
NAMES = ["echo", "fail", "nope", "echo:$LATEST", "arn:aws:lambda:us-east-1:000000000000:function:echo", ""]
SUFFIXES = ["/invocations", "/configuration", "", "/", "/concurrency", "/event-invoke-config"]
HEADERS = ["x-amz-invocation-type", "x-amz-log-type", "x-amz-client-context", "authorization", "x-amz-date"]
HEADER_VALUES = st.one_of(
    st.sampled_from(["RequestResponse", "Event", "DryRun", "Tail", "None", "e30=", "AWS4-HMAC-SHA256 Credential="]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"{}", b"[", b"null", b'{"a": 1}', b"[" * 5000, b'"\\ud800"', b"\xff\xfe"]),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    name = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=40)))
    path = draw(st.sampled_from(PREFIXES)) + "/" + quote(name, safe="") + draw(st.sampled_from(SUFFIXES))
    query = draw(st.sampled_from(["", "?Qualifier=%24LATEST", "?Qualifier=prod", "?MaxItems=0", "?Marker=%%", "?="]))
    headers = draw(st.dictionaries(st.sampled_from(HEADERS), HEADER_VALUES, max_size=4))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    return method, path + query, headers, draw(BODIES)


def _check(endpoint: str, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
    parts = urlsplit(endpoint)
    assert parts.hostname is not None, endpoint
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read()
    finally:
        connection.close()
    assert answer.status < 500, (answer.status, text[:300])
    assert b"Traceback" not in text
    assert answer.getheader("x-amzn-RequestId")
    if answer.status >= 400:
        assert answer.getheader("x-amzn-ErrorType"), text[:300]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_no_request_gets_a_5xx_or_a_traceback(api: ApiStack, request: tuple[str, str, dict[str, str], bytes]) -> None:
    method, target, headers, body = request
    _check(api.open_endpoint, method, target, headers, body)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_signed_endpoint_refuses_cleanly(api: ApiStack, request: tuple[str, str, dict[str, str], bytes]) -> None:
    method, target, headers, body = request
    _check(api.endpoint, method, target, headers, body)
