"""A fuzz run of the XRPC surface (hypothesis) against a running `chive-backfill up`: whatever
the method, verb, parameters, body, content type and token, the answer is never a 500, and
every error is an XRPC error body with the status its name has."""

from __future__ import annotations

import json
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import model
from testkit.broker import free_port
from testkit.harness import Admin, ServiceProcess, service_env
from testkit.servers import wait_until

METHODS = [
    "pub.chive.admin.triggerBackfill",
    "pub.chive.admin.getBackfillStatus",
    "pub.chive.admin.getBackfillHistory",
    "pub.chive.admin.cancelBackfill",
]
PARAMS = ["id", "status", "type", "limit", "cursor", "did", "uri", "pdsUrl", "batchSize"]
TYPES = [*model.BACKFILL_TYPES, "nope", ""]
STATUS_OF = {
    "InvalidRequest": 400,
    "InvalidBackfillType": 400,
    "OperationNotFound": 400,
    "AuthenticationRequired": 401,
    "AdminRequired": 403,
    "PayloadTooLarge": 413,
    "MethodNotImplemented": 501,
    "NotFound": 404,
    "NotEnoughResources": 503,
    "RateLimitExceeded": 429,
}

ADMIN = Admin()
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    [
        "",
        "0",
        "-1",
        "101",
        "1e9",
        "did:plc:abc",
        "did:web:localhost%3A1",
        "at://x/y/z",
        "http://127.0.0.1:1",
        "%00",
        "\r\n",
        "a" * 3000,
        "running",
        "completed",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(TYPES) | text,
                "did": text,
                "uri": text,
                "pdsUrl": text,
                "batchSize": st.integers(-5, 20000) | text,
                "id": text,
                "extra": json_values,
            },
        ),
    ),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
)


@pytest.fixture(scope="module")
def api(tmp_path_factory, plc):
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    service = ServiceProcess(service_env(tmp / "data", port, plc.url, ADMIN), tmp / "up.log")
    service.start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/xrpc/_health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, what="the service to answer")
        with httpx.Client(base_url=base, timeout=30) as http:
            yield http
    finally:
        service.kill()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    nsid=st.sampled_from(METHODS) | st.text(alphabet=string.ascii_letters + ".", max_size=30),
    verb=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    params=st.dictionaries(st.sampled_from(PARAMS) | text, text, max_size=4),
    body=bodies,
    content_type=st.sampled_from(
        [None, "application/json", "application/json; charset=utf-8", "text/plain", "x/y;;"]
    ),
    auth=st.sampled_from(["admin", "other-lxm", "stranger", "junk", "none"]),
)
def test_no_input_gets_a_500(api, nsid, verb, params, body, content_type, auth):
    headers = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if auth == "admin":
        headers["authorization"] = f"Bearer {ADMIN.token(nsid)}"
    elif auth == "other-lxm":
        headers["authorization"] = f"Bearer {ADMIN.token('pub.chive.admin.other')}"
    elif auth == "stranger":
        headers["authorization"] = f"Bearer {Admin().token(nsid)}"
    elif auth == "junk":
        headers["authorization"] = "Bearer a.b.c"
    try:
        response = api.request(verb, f"/xrpc/{nsid}", params=params, content=body, headers=headers)
    except httpx.InvalidURL:
        return  # the client itself will not send it
    assert response.status_code != 500, response.text
    if response.status_code >= 400:
        error = response.json()
        assert set(error) == {"error", "message"}, error
        assert isinstance(error["message"], str)
        assert STATUS_OF.get(error["error"]) == response.status_code, (error, response.status_code)
