"""Hostile callers and hostile servers, with listeners on loopback and the private-network
setting off (as in production): no SSRF through a token's issuer or a PDS, bounded bytes and
time on every outbound fetch, bounded unauthenticated work, and the smaller holes closed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import socket
import stat
import time
import tracemalloc
from pathlib import Path

import httpx
import msgspec
import pytest

from projections import index_location
from services import outbound
from services.api import http_server
from services.atproto import keys
from services.atproto.identity import DidNotFound, DidResolver, did_web_url
from services.workers import pdf_text as pdf_text_module
from services.workers.pdf_text import PdfTextPool, UnreadablePdf
from services.workers.xrpc_client import RetryPolicy, SourceUnavailable, XrpcClient
from testkit.documents import paper_pdf
from testkit.harness import SERVICE_DID, Admin, running_service, settings_for
from testkit.hostile_servers import HostileServer, Reply, gzip_bomb
from testkit.servers import LoopbackServer
from testkit.waiting import eventually

STATUS = "pub.chive.admin.getBackfillStatus"
TRIGGER = "pub.chive.admin.triggerBackfill"
PUBLIC_ONLY = outbound.Policy()
LOOPBACK_OK = outbound.Policy(allow_private=True)


@pytest.fixture
def listener():
    """Whatever an SSRF would reach: it records every connection."""
    server = HostileServer({"/": Reply(200, b'{"secret":"internal answer"}')}).start()
    yield server
    server.stop()


def hostile_settings(tmp_path, admin, plc_url: str, **changes):
    base = settings_for(tmp_path / "data", admin, plc_url)
    return msgspec.structs.replace(
        base, allow_private_networks=False, **{"source_attempts": 1, **changes}
    )


def forged(iss: str, lxm: str = STATUS, **claims) -> str:
    """A token naming `iss`, signed by a key that is not the issuer's."""
    return keys.mint_service_jwt(
        keys.PrivateKey.generate(), iss=iss, aud=SERVICE_DID, lxm=lxm, **claims
    )


def unsigned(payload: dict) -> str:
    """A token with whatever claims, for checks that come before the signature."""
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{part({'alg': 'ES256K', 'typ': 'JWT'})}.{part(payload)}.{'A' * 86}"


# -- did:web as the AT Protocol allows it -----------------------------------------------
@pytest.mark.parametrize(
    "did",
    [
        "did:web:127.0.0.1%3A8080%2Fadmin%2Fdelete%3Fconfirm%3Dyes%26x%3D",
        "did:web:127.0.0.1%3A8080:internal:admin",
        "did:web:example.com:user:alice",
        "did:web:example.com%2Fpath",
        "did:web:example.com%3Fq",
        "did:web:example.com%23frag",
        "did:web:user%40example.com",
        "did:web:example.com%0D%0AX-Injected:1",
        "did:web:example.com%00",
        "did:web:localhost%3A99999",
        "did:web:localhost%3A0",
        "did:web:example.com%3A8443",
        "did:web:-bad-.example",
        "did:web:",
    ],
)
def test_did_web_refuses_everything_but_a_hostname(did):
    with pytest.raises(DidNotFound):
        did_web_url(did)


def test_did_web_urls():
    assert did_web_url("did:web:example.com") == "https://example.com/.well-known/did.json"
    assert did_web_url("did:web:localhost%3A2583") == "http://localhost:2583/.well-known/did.json"
    assert did_web_url("did:web:localhost") == "http://localhost/.well-known/did.json"


async def test_forged_issuers_reach_no_internal_address(tmp_path, plc, listener):
    port = listener.port
    issuers = [
        f"did:web:127.0.0.1%3A{port}%2Fadmin%2Fdelete%3Fconfirm%3Dyes%26x%3D",
        f"did:web:127.0.0.1%3A{port}:internal:admin",
        f"did:web:localhost%3A{port}",
        "did:web:localhost%3A99999",
        "did:web:example.com%0D%0A",
        "did:web:example.com%00",
    ]
    admin = Admin()
    async with running_service(hostile_settings(tmp_path, admin, plc.url), admin) as client:
        for iss in issuers:
            response = await client.http.get(
                f"/xrpc/{STATUS}", headers={"authorization": f"Bearer {forged(iss)}"}
            )
            assert response.status_code == 401, (iss, response.text)
            assert response.json()["error"] == "AuthenticationRequired"
            assert "Traceback" not in response.text
    assert listener.connections == 0, listener.requests


# -- the outbound fetch policy ---------------------------------------------------------
async def test_the_policy_refuses_loopback_and_plain_http(listener):
    async with outbound.Fetcher(PUBLIC_ONLY) as fetcher:
        for url in (listener.url, f"http://localhost:{listener.port}/x", "https://127.0.0.1:1/"):
            with pytest.raises(outbound.FetchRefused):
                await fetcher.fetch(url, max_bytes=100, deadline_s=5)
    assert listener.connections == 0
    trusted = outbound.Policy.for_urls(False, [listener.url])
    async with outbound.Fetcher(trusted) as fetcher:
        got = await fetcher.fetch(listener.url + "/ok", max_bytes=100, deadline_s=5)
    assert got.status == 200 and listener.connections == 1


def test_addresses_the_policy_allows():
    allowed = PUBLIC_ONLY.address_allowed
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
    ):
        assert not allowed("h", 443, address), address
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert allowed("h", 443, address), address


async def test_a_gzip_bomb_stops_at_the_cap_without_inflating():
    bomb = HostileServer({"/": gzip_bomb(200 * 1024 * 1024)}).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            tracemalloc.start()
            with pytest.raises(outbound.ResponseTooLarge):
                await fetcher.fetch(bomb.url, max_bytes=512 * 1024, deadline_s=10)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while refusing a 200 MB bomb"
    finally:
        bomb.stop()


async def test_a_trickle_is_cut_at_the_total_deadline():
    slow = HostileServer({"/": Reply(body=b'{"a":' + b" " * 100 + b"1}", trickle_s=0.2)}).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await fetcher.fetch(slow.url, max_bytes=10**6, deadline_s=1)
            assert time.monotonic() - t0 < 3
    finally:
        slow.stop()


async def test_endless_bodies_and_declared_sizes_over_the_cap_are_refused():
    server = HostileServer(
        {
            "/endless": Reply(body=b"", endless=True),
            "/declared": Reply(body=b" " * 4096),
        }
    ).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            with pytest.raises(outbound.ResponseTooLarge):
                await fetcher.fetch(server.url + "/endless", max_bytes=10**6, deadline_s=10)
            with pytest.raises(outbound.ResponseTooLarge):
                await fetcher.fetch(server.url + "/declared", max_bytes=1000, deadline_s=10)
    finally:
        server.stop()


async def test_a_connection_the_server_closed_while_idle_is_not_used_again():
    """The pool asks our connections whether an idle one is still good (services/outbound.py
    _QuickStream): a server that closes one once it sits idle gets a fresh connection next
    time, not a request on a dead one."""
    connections, close_now = [], asyncio.Event()

    async def answer_then_close(reader: asyncio.StreamReader, writer) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: 2\r\n\r\n{}")
        await writer.drain()
        await close_now.wait()  # no "connection: close": the client keeps it, idle
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer_then_close, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            assert (await fetcher.fetch(url, max_bytes=100, deadline_s=5)).body == b"{}"
            (idle,) = fetcher.http._transport._pool.connections
            sock = idle._connection._network_stream.get_extra_info("socket")
            close_now.set()

            async def close_arrived() -> bool:  # the end of the stream is there to read
                return bool(select.select([sock], [], [], 0)[0])

            await eventually(close_arrived, timeout=5, what="the server's close to arrive")
            assert (await fetcher.fetch(url, max_bytes=100, deadline_s=5)).body == b"{}"
        assert len(connections) == 2
    finally:
        close_now.set()
        server.close()
        await server.wait_closed()


async def test_redirects_are_not_followed(listener):
    redirecting = HostileServer(
        {"/": Reply(302, b"", headers=(("location", listener.url + "/internal"),))}
    ).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            client = XrpcClient(fetcher, RetryPolicy(attempts=1, timeout_s=5))
            with pytest.raises(Exception) as raised:
                await client.query(redirecting.url, "com.atproto.sync.listRepos", {}, dict)
        assert "302" in str(raised.value)
        assert listener.connections == 0
    finally:
        redirecting.stop()


# -- the workers: a PDS cannot make them reach inside ------------------------------------
async def test_workers_reach_no_internal_address(tmp_path, plc, listener, unique):
    admin = Admin()
    did = f"did:plc:inside{unique}"
    plc.register(did, pds_url=listener.url)  # a DID document naming an internal "PDS"
    settings = hostile_settings(tmp_path, admin, plc.url)
    async with running_service(settings, admin) as client:
        scan = await client.trigger(type="pdsScan", pdsUrl=listener.url)
        sync = await client.trigger(type="didSync", did=did)
        for op in (scan, sync):
            done = await client.wait_finished(op["id"])
            assert done["status"] == "failed", done
            assert "refused by the outbound fetch policy" in done["error"], done
            assert "internal answer" not in done["error"]
    assert listener.connections == 0, listener.requests


async def test_error_texts_never_carry_a_servers_body(tmp_path, plc, unique):
    """An answer that is not an XRPC error adds nothing of its body to the operation."""
    server = HostileServer({"/": Reply(403, b"<html>internal admin console</html>")}).start()
    admin = Admin()
    did = f"did:plc:body{unique}"
    plc.register(did, pds_url=server.url)
    settings = msgspec.structs.replace(
        hostile_settings(tmp_path, admin, plc.url), allow_private_networks=True
    )
    try:
        async with running_service(settings, admin) as client:
            done = await client.wait_finished((await client.trigger(type="didSync", did=did))["id"])
            assert done["status"] == "failed" and "HTTP403" in done["error"], done
            assert "console" not in done["error"]
    finally:
        server.stop()


async def test_oversized_pages_and_records(tmp_path, plc, fresh_pds, unique):
    admin = Admin()
    big, crowded = f"did:plc:big{unique}", f"did:plc:crowd{unique}"
    for did in (big, crowded):
        plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(crowded, {"pub.chive.review.comment": 3})
    fresh_pds.add_repo(big, {"pub.chive.review.comment": 3})
    fresh_pds.put_record(
        big, "pub.chive.review.comment", "3kbig", {"body": "x" * (1024 * 1024 + 10)}
    )
    fresh_pds.faults.overfill = 150  # a listRecords page with more records than asked for
    fresh_pds.faults.no_get_repo = True  # so the repo is read page by page
    settings = settings_for(tmp_path / "data", admin, plc.url)
    async with running_service(settings, admin) as client:
        done = await client.wait_finished((await client.trigger(type="didSync", did=crowded))["id"])
        assert done["status"] == "failed" and "for a page of 100" in done["error"], done
        fresh_pds.faults.overfill = 0
        fresh_pds.faults.no_get_repo = False  # read whole: the big record is refused there too
        done = await client.wait_finished((await client.trigger(type="didSync", did=big))["id"])
        assert done["status"] == "completed", done
        assert done["recordsProcessed"] == 3 and done["recordsSkipped"] == 1, done
        assert any("larger than" in reason for reason in done["skipReasons"]), done


# -- unauthenticated work ----------------------------------------------------------------
async def test_bad_signatures_cannot_fan_out_to_the_plc(tmp_path, plc, unique):
    owner = keys.PrivateKey.generate()
    did = f"did:plc:real{unique}"
    plc.register(did, key_multibase=owner.public.multibase())
    admin = Admin()
    async with running_service(hostile_settings(tmp_path, admin, plc.url), admin) as client:
        before = plc.requests
        for _ in range(30):
            response = await client.http.get(
                f"/xrpc/{STATUS}", headers={"authorization": f"Bearer {forged(did)}"}
            )
            assert response.status_code == 401
        assert plc.requests - before <= 2, f"{plc.requests - before} PLC fetches for 30 requests"


async def test_concurrent_lookups_of_one_did_are_one_fetch(plc, unique):
    slow_plc = HostileServer(
        {"/": Reply(200, json.dumps({"id": f"did:plc:slow{unique}"}).encode(), trickle_s=0.01)}
    ).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            resolver = DidResolver(fetcher, slow_plc.url, 10.0)
            docs = await asyncio.gather(
                *(resolver.resolve(f"did:plc:slow{unique}") for _ in range(20))
            )
        assert all(d["id"] == f"did:plc:slow{unique}" for d in docs)
        assert slow_plc.connections == 1 and resolver.fetches == 1
    finally:
        slow_plc.stop()


async def test_rate_limit_per_client_address(tmp_path, plc):
    admin = Admin()
    settings = msgspec.structs.replace(
        hostile_settings(tmp_path, admin, plc.url), rate_limit_per_minute=60
    )
    async with running_service(settings, admin) as client:
        statuses = [(await client.get(STATUS)).status_code for _ in range(15)]
        assert statuses[:10] == [200] * 10, statuses
        limited = await client.get(STATUS)
        assert limited.status_code == 429
        assert limited.json() == {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
        assert int(limited.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    "claims, reason",
    [
        ({"exp": float("nan")}, "missing exp"),
        ({"exp": float("inf")}, "missing exp"),
        ({"exp": 253402300799}, "lifetime"),  # year 9999
        ({"iat": time.time() + 3600}, "future"),
    ],
)
async def test_token_times(tmp_path, plc, claims, reason):
    admin = Admin()
    async with running_service(hostile_settings(tmp_path, admin, plc.url), admin) as client:
        payload = {
            "iss": admin.did,
            "aud": SERVICE_DID,
            "lxm": STATUS,
            "exp": time.time() + 60,
            **claims,
        }
        token = unsigned(payload)
        response = await client.http.get(
            f"/xrpc/{STATUS}", headers={"authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert reason in response.json()["message"]


# -- the HTTP server ---------------------------------------------------------------------
async def test_unfinished_headers_are_cut_off(tmp_path, plc, monkeypatch):
    monkeypatch.setattr(http_server, "HEADER_TIMEOUT_S", 1.0)
    admin = Admin()
    async with running_service(hostile_settings(tmp_path, admin, plc.url), admin) as client:
        port = int(client.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        writer.write(b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\n")
        try:
            # Trickle a header byte now and then: the deadline does not move.
            while time.monotonic() - t0 < 5:
                writer.write(b"X")
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    break
        except (TimeoutError, ConnectionError):
            pass
        closed_after = time.monotonic() - t0
        writer.close()
        assert closed_after < 3, f"connection held for {closed_after:.1f}s"
        assert (await client.get(STATUS)).status_code == 200


async def test_oversized_or_broken_requests_get_xrpc_errors(tmp_path, plc):
    admin = Admin()
    async with running_service(hostile_settings(tmp_path, admin, plc.url), admin) as client:
        port = int(client.base_url.rsplit(":", 1)[1])

        async def answer(request: bytes) -> tuple[int, dict]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), 10)  # the server closes
            finally:
                writer.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            return int(head.split()[1]), json.loads(body)

        # Headers past 16 KiB, whether or not they would end later: 431, as Node answers.
        padding = b"x-padding: " + b"y" * (http_server.MAX_HEADER_BYTES + 1) + b"\r\n"
        status, body = await answer(b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\n" + padding)
        assert (status, body["error"]) == (431, "InvalidRequest")
        # The same after a first request on the connection was served.
        first = b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(first)
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.write(b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\n" + padding)
            rest = await asyncio.wait_for(reader.read(), 10)
            assert b"HTTP/1.1 431" in rest, rest[:200]
        finally:
            writer.close()
        # Bytes that are not HTTP: 400 with an XRPC body, not uvicorn's plain text.
        status, body = await answer(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert (status, body["error"]) == (400, "InvalidRequest")
        assert (await client.get(STATUS)).status_code == 200


async def test_a_trickled_body_is_refused(tmp_path, plc, monkeypatch):
    from services.api import xrpc

    monkeypatch.setattr(xrpc, "BODY_TIMEOUT_S", 1.0)
    admin = Admin()
    async with running_service(hostile_settings(tmp_path, admin, plc.url), admin) as client:
        port = int(client.base_url.rsplit(":", 1)[1])

        def slow_post() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(
                    (
                        f"POST /xrpc/{TRIGGER} HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {admin.token(TRIGGER)}\r\n"
                        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                    ).encode()
                )
                s.settimeout(5)
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
                    if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                        break
                return answer

        answer = await asyncio.to_thread(slow_post)
        assert b" 400 " in answer.split(b"\r\n")[0] and b"within" in answer


# -- documents ---------------------------------------------------------------------------
async def test_pdf_extraction_is_killed_past_its_deadline(monkeypatch):
    monkeypatch.setattr(pdf_text_module, "WALL_SECONDS", 0.01)
    pool = PdfTextPool(size=1)
    try:
        with pytest.raises(UnreadablePdf, match="longer than"):
            await pool.text(paper_pdf("A paper", ["A. B. Title. 2020."] * 200))
        monkeypatch.setattr(pdf_text_module, "WALL_SECONDS", 30.0)
        # The killed child is replaced: the next document is read by a new one.
        assert "A paper" in await pool.text(paper_pdf("A paper", []))
        assert pool.started == 2
    finally:
        await pool.close()


async def test_a_document_over_its_cpu_budget_ends_its_child(monkeypatch):
    """The CPU budget is the kernel's: a child over it is ended, and replaced."""
    monkeypatch.setattr(pdf_text_module, "CPU_SECONDS", 0)
    pool = PdfTextPool(size=1)
    try:
        with pytest.raises(UnreadablePdf, match=r"signal \d+ \(CPU or memory limit\)"):
            await pool.text(paper_pdf("Spin", ["A. B. Title. 2020."] * 2000))
    finally:
        await pool.close()


async def test_a_cancelled_extraction_leaves_no_process():
    pool = PdfTextPool(size=1)
    task = asyncio.create_task(pool.text(paper_pdf("A paper", ["A. B. Title. 2020."] * 500)))
    await eventually(lambda: pool.started == 1, what="the extraction process")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool._idle == [], "a cancelled child went back to the pool"
    await pool.close()


# -- smaller holes -----------------------------------------------------------------------
def test_key_files_are_private_from_the_start(tmp_path):
    old = os.umask(0)
    try:
        keys.load_or_create(tmp_path / "admin-key.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "admin-key.pem").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["admin-key.pem"]


def test_index_file_names_stay_in_the_data_dir(tmp_path):
    for name in ("/etc/passwd", "../records.db", "records-x/../../y.db", "other.db", ""):
        with pytest.raises(ValueError):
            index_location.index_file(tmp_path, name)
    assert index_location.index_file(tmp_path, "records-01abc.db") == tmp_path / "records-01abc.db"
    (tmp_path / index_location.POINTER).write_text("/etc/passwd\n")
    with pytest.raises(ValueError):
        index_location.active_path(tmp_path)


async def test_token_command_mints_short_lived_tokens(tmp_path):
    from testkit.harness import run_cli

    code, out, err = await run_cli({"CHIVE_DATA_DIR": str(tmp_path)}, "token", "--lxm", STATUS)
    assert code == 0, err
    payload = json.loads(keys.b64url_decode(out.strip().split(".")[1]))
    assert payload["exp"] - payload["iat"] == 60
    code, _, err = await run_cli({"CHIVE_DATA_DIR": str(tmp_path)}, "token", "--ttl", "86400")
    assert code == 2 and "must be 1..3600 seconds" in err


def test_the_image_runs_unprivileged():
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "pip install --no-cache-dir ." in dockerfile and "-e ." not in dockerfile


async def test_blobs_are_capped_while_they_stream(tmp_path, plc, unique):
    """A getBlob that inflates past the cap is refused as it streams, not after."""
    bomb = HostileServer({"/xrpc/com.atproto.sync.getBlob": gzip_bomb(300 * 1024 * 1024)}).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            client = XrpcClient(fetcher, RetryPolicy(attempts=1, timeout_s=10))
            tracemalloc.start()
            with pytest.raises(Exception, match="BlobTooLarge"):
                await client.blob(bomb.url, "did:plc:x", "bafy", 1024 * 1024)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < 16 * 1024 * 1024, peak
    finally:
        bomb.stop()


async def test_refusals_are_not_retried(listener):
    async with outbound.Fetcher(PUBLIC_ONLY) as fetcher:
        client = XrpcClient(fetcher, RetryPolicy(attempts=5, timeout_s=5))
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match="refused"):
            await client.query(listener.url, "com.atproto.sync.listRepos", {}, dict)
        assert time.monotonic() - t0 < 1, "a refusal was retried with backoff"


def test_httpx_is_not_used_directly_for_outbound_fetches():
    """Every outbound client is built by services/outbound.py (its policy on each connection).
    The one exception is the CLI's client of this service's own API, at the URL its operator
    gives (admin_client.py): it fetches nothing on anyone else's behalf."""
    root = Path(__file__).resolve().parents[1] / "services"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "httpx.AsyncClient(" in p.read_text()
        and p.name not in ("outbound.py", "admin_client.py")
    ]
    assert offenders == []


async def test_connections_past_the_cap_get_an_xrpc_503(tmp_path, plc):
    admin = Admin()
    settings = msgspec.structs.replace(
        hostile_settings(tmp_path, admin, plc.url), max_connections=3
    )
    async with running_service(settings, admin) as client:
        port = int(client.base_url.rsplit(":", 1)[1])
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            async with httpx.AsyncClient() as fresh:
                response = await fresh.get(f"{client.base_url}/xrpc/_health")
            assert response.status_code == 503
            assert response.json()["error"] == "NotEnoughResources"
        finally:
            for _, writer in idle:
                writer.close()

        async def served() -> bool:
            async with httpx.AsyncClient() as fresh:
                return (await fresh.get(f"{client.base_url}/xrpc/_health")).status_code == 200

        await eventually(served, what="service again once the idle connections closed")


async def test_fetches_beyond_the_connections_wait_for_one_without_failing():
    """A burst of fetches (hundreds of operations starting at once, each resolving a DID)
    waits its turn for a connection; only the time a fetch spends on its source counts
    against its deadline. Before: the waits counted, and a burst failed as "unreachable"
    (TimeoutError here, PoolTimeout with hundreds waiting in httpcore's pool)."""
    from starlette.responses import JSONResponse

    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(0.05)
        await JSONResponse({"ok": True})(scope, receive, send)

    server = LoopbackServer(slow).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK, max_connections=4) as fetcher:

            async def one(i: int) -> int:
                fetched = await fetcher.fetch(f"{server.url}/{i}", max_bytes=1000, deadline_s=1.0)
                return fetched.status

            # 120 answers of 50 ms, 4 at a time: about 1.5 s in all, each fetch 50 ms of it.
            statuses = await asyncio.gather(*(one(i) for i in range(120)))
        assert statuses == [200] * 120
    finally:
        server.stop()


async def test_grobid_requests_count_against_the_same_connections():
    import threading

    from starlette.responses import PlainTextResponse

    from services.workers.grobid import Grobid

    received, gate = threading.Event(), threading.Event()

    async def alive(scope, receive, send) -> None:
        received.set()
        await asyncio.to_thread(gate.wait, 10)
        await PlainTextResponse("true")(scope, receive, send)

    server = LoopbackServer(alive).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK, max_connections=1) as fetcher:
            call = asyncio.create_task(Grobid(fetcher, server.url, RetryPolicy()).check_alive())
            await eventually(received.is_set, what="GROBID's request to arrive")
            # In flight, it holds the one connection a fetch would need.
            assert fetcher.connection().locked()
            gate.set()
            await call
            assert not fetcher.connection().locked()
    finally:
        gate.set()
        server.stop()


async def test_the_did_cache_is_bounded_in_bytes(monkeypatch, unique):
    from services.atproto import identity

    monkeypatch.setattr(identity, "MAX_CACHE_BYTES", 250 * 1024)

    def document(line: str) -> Reply:
        did = line.split(" ")[1].lstrip("/")
        return Reply(200, json.dumps({"id": did, "padding": "x" * 100 * 1024}).encode())

    plc_like = HostileServer({"/": document}).start()
    try:
        async with outbound.Fetcher(LOOPBACK_OK) as fetcher:
            resolver = DidResolver(fetcher, plc_like.url, 10.0)
            for i in range(6):
                await resolver.resolve(f"did:plc:big{unique}{i}")
            assert len(resolver._cache) == 2
            assert resolver._cache_bytes <= 250 * 1024
            # The newest stay; the oldest were evicted and cost a fetch again.
            await resolver.resolve(f"did:plc:big{unique}5")
            assert plc_like.connections == 6
            await resolver.resolve(f"did:plc:big{unique}0")
            assert plc_like.connections == 7
    finally:
        plc_like.stop()
