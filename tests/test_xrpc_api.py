"""The XRPC surface: verbs, bodies, auth, input rules, errors, pagination."""

from __future__ import annotations

import json
import random
import time
from urllib.parse import quote

import pytest

from services.atproto import keys
from testkit.harness import SERVICE_DID, Admin, running_service, settings_for
from testkit.waiting import eventually

TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
HISTORY = "pub.chive.admin.getBackfillHistory"
CANCEL = "pub.chive.admin.cancelBackfill"
METHODS = (TRIGGER, STATUS, HISTORY, CANCEL)


@pytest.fixture
async def service(tmp_path, plc):
    admin = Admin()
    async with running_service(settings_for(tmp_path / "data", admin, plc.url), admin) as c:
        yield c


def assert_error(response, status: int, name: str, contains: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == name
    assert contains in body["message"]


# -- routing and verbs -------------------------------------------------------------------
async def test_unknown_method_is_501(service):
    response = await service.http.get("/xrpc/pub.chive.admin.noSuchThing")
    assert_error(response, 501, "MethodNotImplemented")


async def test_every_path_under_xrpc_answers_an_xrpc_error(service):
    # Served ahead of FastAPI's routing (xrpc.XrpcPaths): the same answers its routes gave.
    for path in ("/xrpc/", "/xrpc/a/b", f"/xrpc/{STATUS}/more"):
        assert_error(await service.http.get(path), 501, "MethodNotImplemented")
    assert_error(
        await service.http.request("OPTIONS", f"/xrpc/{STATUS}"), 501, "MethodNotImplemented"
    )
    health = await service.http.get("/xrpc/_health")
    assert (health.status_code, health.json()) == (200, {"version": "chive-backfill"})
    assert_error(await service.http.get("/no/such/page"), 404, "NotFound")


async def test_wrong_verb_is_400(service):
    assert_error(
        await service.http.get(f"/xrpc/{TRIGGER}", headers=service.auth(TRIGGER)),
        400,
        "InvalidRequest",
        "GET",
    )
    assert_error(
        await service.http.post(f"/xrpc/{STATUS}", headers=service.auth(STATUS)),
        400,
        "InvalidRequest",
        "POST",
    )


# -- auth ------------------------------------------------------------------------------
@pytest.mark.parametrize("nsid", METHODS)
async def test_every_method_requires_auth(service, nsid):
    if nsid in (TRIGGER, CANCEL):
        response = await service.http.post(f"/xrpc/{nsid}", json={"id": "x", "type": "didSync"})
    else:
        response = await service.http.get(f"/xrpc/{nsid}")
    assert_error(response, 401, "AuthenticationRequired")


async def test_auth_is_checked_before_the_body(service):
    response = await service.http.post(
        f"/xrpc/{TRIGGER}", content=b"{not json", headers={"content-type": "text/plain"}
    )
    assert_error(response, 401, "AuthenticationRequired")


def _forged(admin: Admin, header: dict, payload: dict, key: keys.PrivateKey | None = None) -> str:
    signing = (
        keys.b64url(json.dumps(header).encode()) + "." + keys.b64url(json.dumps(payload).encode())
    )
    return signing + "." + keys.b64url((key or admin.key).sign(signing.encode()))


def _payload(admin: Admin, **changes) -> dict:
    base = {"iss": admin.did, "aud": SERVICE_DID, "lxm": STATUS, "exp": int(time.time()) + 60}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-a-jwt", "Poorly formatted"),
        ("wrong-aud", "audience"),
        ("wrong-lxm", "lexicon method"),
        ("no-lxm", "lexicon method"),
        ("expired", "expired"),
        ("no-exp", "exp"),
        ("typ-at+jwt", "type"),
        ("other-key", "signature"),
        ("alg-mismatch", "alg"),
        ("basic-scheme", "authorization type"),
        ("iss-not-did", "DID"),
    ],
)
async def test_invalid_tokens_are_401(service, case, message):
    admin = service.admin
    header = {"typ": "JWT", "alg": "ES256K"}
    token = {
        "not-a-jwt": lambda: "abc.def",
        "wrong-aud": lambda: _forged(admin, header, _payload(admin, aud="did:web:other")),
        "wrong-lxm": lambda: _forged(admin, header, _payload(admin, lxm=TRIGGER)),
        "no-lxm": lambda: _forged(admin, header, _payload(admin, lxm=None)),
        "expired": lambda: _forged(admin, header, _payload(admin, exp=int(time.time()) - 5)),
        "no-exp": lambda: _forged(admin, header, _payload(admin, exp=None)),
        "typ-at+jwt": lambda: _forged(admin, {**header, "typ": "at+jwt"}, _payload(admin)),
        "other-key": lambda: _forged(admin, header, _payload(admin), keys.PrivateKey.generate()),
        "alg-mismatch": lambda: _forged(admin, {**header, "alg": "ES256"}, _payload(admin)),
        "basic-scheme": lambda: None,
        "iss-not-did": lambda: _forged(admin, header, _payload(admin, iss="admin")),
    }[case]()
    authorization = "Basic dXNlcjpwYXNz" if token is None else f"Bearer {token}"
    response = await service.http.get(f"/xrpc/{STATUS}", headers={"authorization": authorization})
    assert_error(response, 401, "AuthenticationRequired", message)


async def test_high_s_signature_is_refused(service):
    admin = service.admin
    token = _forged(admin, {"typ": "JWT", "alg": "ES256K"}, _payload(admin))
    head, body, sig = token.split(".")
    raw = keys.b64url_decode(sig)
    s = int.from_bytes(raw[32:], "big")
    flipped = raw[:32] + (keys.K256.order - s).to_bytes(32, "big")
    response = await service.http.get(
        f"/xrpc/{STATUS}", headers={"authorization": f"Bearer {head}.{body}.{keys.b64url(flipped)}"}
    )
    assert_error(response, 401, "AuthenticationRequired", "signature")


async def test_valid_token_of_a_non_admin_is_403(service):
    stranger = Admin()
    response = await service.get(STATUS, admin=stranger)
    assert_error(response, 403, "AdminRequired")


async def test_did_plc_admin_with_p256_key_and_key_rotation(tmp_path, plc, unique):
    did = f"did:plc:admin{unique}"
    first = keys.PrivateKey.generate(keys.P256)
    plc.register(did, key_multibase=first.public.multibase())
    admin = Admin(first, did)
    async with running_service(settings_for(tmp_path / "d", admin, plc.url), admin) as client:
        assert (await client.get(STATUS)).status_code == 200
        # The admin rotates its key; the cached document is stale but a retry resolves afresh.
        rotated = keys.PrivateKey.generate(keys.K256)
        plc.register(did, key_multibase=rotated.public.multibase())
        assert (await client.get(STATUS, admin=Admin(rotated, did))).status_code == 200
        # The old key no longer verifies.
        assert_error(await client.get(STATUS, admin=admin), 401, "AuthenticationRequired")


@pytest.mark.parametrize("curve", [keys.K256, keys.P256], ids=["k256", "p256"])
@pytest.mark.parametrize("form", ["multikey", "legacy", "legacy-compressed"])
async def test_did_web_admin(tmp_path, plc, fresh_pds, curve, form):
    """Every key form the DID spec allows in a did:web document verifies its tokens."""
    port = fresh_pds.url.rsplit(":", 1)[1]
    did = f"did:web:localhost{quote(':')}{port}"
    key = keys.PrivateKey.generate(curve)
    from testkit.servers import did_document

    fresh_pds.did_web_documents[f"localhost:{port}"] = did_document(
        did, key_multibase=key.public.multibase(), form=form
    )
    admin = Admin(key, did)
    async with running_service(settings_for(tmp_path / "d", admin, plc.url), admin) as client:
        assert (await client.get(STATUS)).status_code == 200
        unknown = Admin(keys.PrivateKey.generate(), "did:plc:unregistered")
        assert_error(await client.get(STATUS, admin=unknown), 401, "AuthenticationRequired")


async def test_unknown_issuers_do_not_fan_out_to_the_plc(service, plc, unique):
    stranger = Admin(keys.PrivateKey.generate(), f"did:plc:nobody{unique}")
    before = plc.requests
    for _ in range(5):
        response = await service.get(STATUS, admin=stranger)
        assert_error(response, 401, "AuthenticationRequired", "resolve")
    assert plc.requests - before == 1


# -- bodies ----------------------------------------------------------------------------
async def test_body_rules(service):
    auth = service.auth(TRIGGER)
    url = f"/xrpc/{TRIGGER}"
    assert_error(await service.http.post(url, headers=auth), 400, "InvalidRequest")
    no_type = await service.http.post(url, content=b'{"type":"didSync"}', headers=auth)
    assert_error(no_type, 400, "InvalidRequest", "Content-Type")
    text = await service.http.post(
        url, content=b'{"type":"x"}', headers={**auth, "content-type": "text/plain"}
    )
    assert_error(text, 400, "InvalidRequest", "text/plain")
    bad = await service.http.post(
        url, content=b"{nope", headers={**auth, "content-type": "application/json"}
    )
    assert_error(bad, 400, "InvalidRequest", "JSON")
    big = await service.http.post(
        url,
        content=json.dumps({"type": "x" * (101 * 1024)}).encode(),
        headers={**auth, "content-type": "application/json"},
    )
    assert_error(big, 413, "PayloadTooLarge")
    charset = await service.http.post(
        url,
        content=b'{"type":"governanceSync"}',
        headers={**service.auth(TRIGGER), "content-type": "application/json; charset=utf-8"},
    )
    assert charset.status_code == 200, charset.text


@pytest.mark.parametrize(
    ("body", "status", "name", "contains"),
    [
        ({"type": "everything"}, 400, "InvalidBackfillType", "everything"),
        ({}, 400, "InvalidRequest", "type"),
        ({"type": 5}, 400, "InvalidRequest", "string"),
        ({"type": "didSync"}, 400, "InvalidRequest", "did"),
        ({"type": "didSync", "did": "alice"}, 400, "InvalidRequest", "did"),
        (
            {"type": "didSync", "did": "did:plc:ok", "pdsUrl": "http://x"},
            400,
            "InvalidRequest",
            "pdsUrl",
        ),
        (
            {"type": "citationExtraction", "uri": "at://did:plc:a/pub.chive.eprint.submission"},
            400,
            "InvalidRequest",
            "full record",
        ),
        (
            {"type": "citationExtraction", "uri": "https://example.com/x"},
            400,
            "InvalidRequest",
            "at-uri",
        ),
        ({"type": "pdsScan", "pdsUrl": "ftp://pds.example"}, 400, "InvalidRequest", "http"),
        ({"type": "pdsScan", "pdsUrl": "pds.example"}, 400, "InvalidRequest", "http"),
        ({"type": "fullReindex", "batchSize": 0}, 400, "InvalidRequest", "batchSize"),
        ({"type": "fullReindex", "batchSize": 10001}, 400, "InvalidRequest", "batchSize"),
        ({"type": "fullReindex", "batchSize": "10"}, 400, "InvalidRequest", "batchSize"),
        ({"type": "fullReindex", "batchSize": 1.5}, 400, "InvalidRequest", "batchSize"),
        ({"type": "governanceSync", "batchSize": 5}, 400, "InvalidRequest", "batchSize"),
        ({"type": "governanceSync", "pdsURL": "x"}, 400, "InvalidRequest", "pdsURL"),
        ([1, 2], 400, "InvalidRequest", "object"),
    ],
)
async def test_input_rules(service, body, status, name, contains):
    assert_error(await service.post(TRIGGER, body), status, name, contains)


async def test_no_input_yields_a_500(service):
    rng = random.Random(7)
    values = [None, 0, -1, 10**30, "", "x" * 3000, "did:plc:x", "at://a", [], {}, True, 1.5]
    fields = ["type", "did", "uri", "pdsUrl", "batchSize", "id", "extra"]
    for _ in range(150):
        body = {f: rng.choice(values) for f in rng.sample(fields, rng.randint(0, 4))}
        if rng.random() < 0.5:
            body["type"] = rng.choice(["didSync", "pdsScan", "fullReindex", "citationExtraction"])
        response = await service.post(TRIGGER, body)
        assert response.status_code in (200, 400), (body, response.text)
        if response.status_code == 200:
            await service.post(CANCEL, {"id": response.json()["operation"]["id"]})
    for params in (
        {"limit": "0"},
        {"limit": "x"},
        {"cursor": "%%%"},
        {"id": "nope"},
        {"limit": "5", "limit2": "1"},
        {"status": "weird"},
    ):
        response = await service.get(STATUS, **params)
        assert response.status_code in (200, 400), (params, response.text)


# -- reads -----------------------------------------------------------------------------
async def test_status_and_history_paginate_newest_first(service):
    ids = []
    for _ in range(7):
        ids.append((await service.trigger(type="governanceSync"))["id"])
        await service.wait_finished(ids[-1])
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await service.get(STATUS, **params)).json()
        seen.extend(op["id"] for op in page["operations"])
        cursor = page.get("cursor")
        if not cursor:
            break
    assert seen == list(reversed(ids))
    history = (await service.get(HISTORY, limit=100, type="governanceSync")).json()
    assert [op["id"] for op in history["operations"]] == list(reversed(ids))
    assert all(op["status"] == "failed" for op in history["operations"])
    failed = (await service.get(STATUS, status="failed", limit=2)).json()
    assert len(failed["operations"]) == 2 and failed["cursor"]
    none = (await service.get(STATUS, type="didSync")).json()
    assert none == {"operations": []}


async def test_unknown_ids_and_cursors(service):
    assert_error(await service.get(STATUS, id="nope"), 400, "OperationNotFound")
    assert_error(await service.post(CANCEL, {"id": "nope"}), 400, "OperationNotFound")
    assert_error(await service.get(STATUS, cursor="garbage!"), 400, "InvalidRequest", "cursor")
    assert_error(await service.get(STATUS, limit="0"), 400, "InvalidRequest", "limit")
    assert_error(await service.get(HISTORY, limit="101"), 400, "InvalidRequest", "limit")


async def test_finished_operation_cannot_be_cancelled(service):
    op = await service.trigger(type="fullReindex")
    done = await service.wait_finished(op["id"])
    assert (await service.post(CANCEL, {"id": op["id"]})).json() == {"success": False}

    async def unchanged() -> bool:
        return (await service.status(op["id"])) == done

    assert await eventually(unchanged)
