"""The OpenAPI document the API serves reflects the lexicons, and schemathesis, generating
requests from it against a running service (`chive-backfill up`, its admin the local key),
finds no 500 and no response that breaks the document."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from services import bootstrap
from services.api.lexicon import Lexicons
from services.atproto import keys
from services.settings import load
from testkit.broker import free_port
from testkit.harness import ServiceProcess, service_env


@pytest.fixture(scope="module")
def running(tmp_path_factory, plc):
    data = tmp_path_factory.mktemp("openapi") / "data"
    env = service_env(data, free_port(), plc.url)
    service = ServiceProcess(env, data.parent / "service.log")
    service.start()
    base = f"http://127.0.0.1:{env['CHIVE_PORT']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)
    key = bootstrap.local_admin_key(load(env))
    try:
        yield base, key, load(env).service_did
    finally:
        assert service.terminate() == 0, service.log_path.read_text()[-2000:]


@pytest.fixture(scope="module")
def xrpc_schema(running):
    base, _, _ = running
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


def test_the_document_lists_every_method_with_its_lexicon(running):
    base, _, _ = running
    document = httpx.get(f"{base}/openapi.json").json()
    lexicons = Lexicons.load()
    assert set(document["paths"]) == {f"/xrpc/{nsid}" for nsid in lexicons.nsids()}
    trigger = document["paths"]["/xrpc/pub.chive.admin.triggerBackfill"]["post"]
    body = trigger["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["type"] and body["properties"]["batchSize"]["maximum"] == 10000
    errors = trigger["responses"]["400"]["content"]["application/json"]["schema"]["allOf"][1]
    assert "InvalidBackfillType" in errors["properties"]["error"]["enum"]
    status = document["paths"]["/xrpc/pub.chive.admin.getBackfillStatus"]["get"]
    limit = next(p for p in status["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}
    assert json.dumps(document).count("OperationNotFound") >= 2


def test_no_request_breaks_the_api(running, xrpc_schema):
    _, key, service_did = running
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in xrpc_schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:
        fuzz(operation, key, service_did, checks)


def fuzz(operation, key, service_did: str, checks: list) -> None:
    nsid = operation.path.rsplit("/", 1)[1]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case) -> None:
        token = keys.mint_service_jwt(key, iss=key.public.did_key(), aud=service_did, lxm=nsid)
        response = case.call(headers={"authorization": f"Bearer {token}"})
        case.validate_response(response, checks=checks)

    check()
