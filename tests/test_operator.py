"""What an operator sees: the CLI drives operations through the API (trigger, watch, status,
history, cancel) and exits non-zero when something failed, and the service's log tells each
operation's life in JSON lines, without a token in them."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from testkit.broker import free_port
from testkit.harness import ServiceProcess, run_cli, service_env
from testkit.waiting import eventually


@pytest.fixture
async def service(tmp_path, plc):
    """`chive-backfill up`, its admin the local key the CLI signs with, logging at INFO to a
    file (not a terminal: JSON lines)."""
    env = service_env(tmp_path / "data", free_port(), plc.url, CHIVE_LOG_LEVEL="INFO")
    process = ServiceProcess(env, tmp_path / "service.log")
    process.start()

    async def up() -> bool:
        code, _, _ = await run_cli(process.env, "status")
        return code == 0

    try:
        await eventually(up, timeout=30, what="API up")
        yield process
    finally:
        assert process.terminate() == 0


def log_lines(service: ServiceProcess) -> list[dict]:
    lines = service.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_the_cli_drives_an_operation_to_its_end(service, plc, fresh_pds, unique):
    did = f"did:plc:op{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 30})
    code, out, err = await run_cli(service.env, "trigger", "didSync", "--did", did, "--json")
    assert code == 0, err
    op = json.loads(out)
    assert op["type"] == "didSync" and op["params"] == {"did": did}
    code, out, _ = await run_cli(service.env, "watch", op["id"])
    assert code == 0 and "completed" in out.splitlines()[-1], out
    code, out, _ = await run_cli(service.env, "status", op["id"], "--json")
    assert code == 0 and json.loads(out)["recordsProcessed"] == 30
    code, out, _ = await run_cli(service.env, "history", "--json")
    assert code == 0 and [o["id"] for o in json.loads(out)] == [op["id"]]
    # Nothing left to cancel, nothing running.
    code, out, _ = await run_cli(service.env, "cancel", op["id"])
    assert code == 1 and "already finished" in out
    code, out, _ = await run_cli(service.env, "status")
    assert code == 0 and out.strip() == "none"


async def test_a_failure_is_a_non_zero_exit_and_an_api_error_is_named(service, unique):
    code, out, _ = await run_cli(
        service.env, "trigger", "didSync", "--did", f"did:plc:nobody{unique}", "--watch"
    )
    assert code == 1 and "failed" in out and "not found" in out, out
    code, _, err = await run_cli(service.env, "status", "01nosuchoperation00000000")
    assert code == 1 and "OperationNotFound" in err
    code, _, err = await run_cli(service.env, "trigger", "didSync", "--did", "alice")
    assert code == 1 and "InvalidRequest" in err


async def test_the_log_tells_an_operations_life_without_secrets(service, unique):
    code, out, _ = await run_cli(
        service.env, "trigger", "didSync", "--did", f"did:plc:gone{unique}", "--json"
    )
    assert code == 0
    op = json.loads(out)

    def life() -> list[dict] | None:
        mine = [line for line in log_lines(service) if line.get("operation_id") == op["id"]]
        return mine if any(line.get("status") == "failed" for line in mine) else None

    lines = await eventually(life, what="the operation's failure in the log")
    steps = [line["message"].split(":")[0] for line in lines]
    assert (
        steps[:2] == ["backfill requested", "backfill started"] and steps[-1] == "backfill failed"
    )
    requested, started, failed = lines[0], lines[1], lines[-1]
    assert requested["requested_by"].startswith("did:key:")
    assert started["worker"].startswith("didSync@")
    assert "not found" in failed["error"] and failed["level"] == "WARNING"
    assert all(line["backfill_type"] == "didSync" for line in lines)
    # The CLI sent a fresh JWT with every call; none of them is in the log.
    assert "eyJ" not in service.log_path.read_text()


async def test_init_and_an_audit_of_each_projection_where_it_lives(
    service, fresh_pds, unique, tmp_path
):
    did = f"did:plc:audit{unique}"
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 12})
    code, out, _ = await run_cli(service.env, "trigger", "didSync", "--did", did, "--watch")
    assert code == 0, out
    for projection, count in (("operations", 1), ("records", 12)):

        async def verified(projection=projection, count=count):
            code, out, _ = await run_cli(
                service.env, "replay", "--verify", "--projection", projection
            )
            summary = json.loads(out.splitlines()[-1]) if code == 0 else {}
            return summary == {projection: count, "differences": 0}

        await eventually(verified, what=f"the {projection} projection verified")
    # A data dir with the log and the operations projection only (the API's volume in a
    # deployment): that projection can be audited there, the whole audit cannot.
    data = service.env["CHIVE_DATA_DIR"]
    api_only = tmp_path / "api-volume"
    api_only.mkdir()
    # SQLite's online backup gives consistent copies of files a live process writes.
    for name in ("events.db", "api-operations.db"):
        with sqlite3.connect(f"{data}/{name}") as src, sqlite3.connect(api_only / name) as dst:
            src.backup(dst)
    env = {**service.env, "CHIVE_DATA_DIR": str(api_only)}
    code, out, _ = await run_cli(env, "replay", "--verify", "--projection", "operations")
    assert code == 0 and json.loads(out.splitlines()[-1])["differences"] == 0, out
    code, _, err = await run_cli(env, "replay", "--verify")
    assert code == 2 and "no live records projection" in err
    # `init` creates the topics of a new log and exits.
    fresh = {**service.env, "CHIVE_DATA_DIR": str(tmp_path / "new")}
    code, _, err = await run_cli(fresh, "init")
    assert code == 0 and "topics ready with 3 partitions" in err
    assert (tmp_path / "new" / "events.db").exists()


async def test_the_admin_page_mints_local_tokens_for_localhost_only(service):
    """In the embedded default the page gets tokens of the local key, but never for a page
    served under another name (DNS rebinding) or for a method this service does not have."""

    base = f"http://127.0.0.1:{service.env['CHIVE_PORT']}"
    async with httpx.AsyncClient(base_url=base) as http:
        url = "/admin/backfill/token"
        ok = await http.post(url, json={"lxm": "pub.chive.admin.getBackfillStatus"})
        assert ok.status_code == 200 and ok.json()["token"].count(".") == 2
        rebound = await http.post(
            url, json={"lxm": "pub.chive.admin.getBackfillStatus"}, headers={"host": "evil.example"}
        )
        assert rebound.status_code == 403 and rebound.json()["error"] == "AdminRequired"
        other = await http.post(url, json={"lxm": "com.atproto.server.createSession"})
        assert other.status_code == 400 and other.json()["error"] == "InvalidRequest"
        page = await http.get("/admin/backfill")
        assert page.status_code == 200 and "<script" in page.text
