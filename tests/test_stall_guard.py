"""With no worker of its type alive, an operation does not look healthy forever: after the
configured silence it reads as stalled (with the time of its last event), and it resumes and
completes as soon as a worker comes."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from services import bootstrap
from testkit.harness import Admin, Client, settings_for
from testkit.waiting import eventually


@pytest.mark.parametrize("log_kind", ["sqlite", "kafka"])
async def test_operation_without_a_worker_is_flagged_stalled_then_resumes(
    log_kind, kafka, tmp_path, plc, fresh_pds, unique
):
    admin = Admin()
    settings = msgspec.structs.replace(
        settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique),
        stall_after_s=1,
    )
    did = f"did:plc:stall{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 40})
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_ready(port: int) -> None:
        ready.set_result(port)

    async with bootstrap.open_log(settings) as event_log:
        # The API and projector run; no worker of any type does.
        parts = [
            asyncio.create_task(bootstrap.run_api(settings, event_log, stop, on_ready)),
            asyncio.create_task(bootstrap.run_projector(settings, event_log, stop)),
        ]
        client = Client(f"http://127.0.0.1:{await asyncio.wait_for(ready, 30)}", admin)
        try:
            op = await client.trigger(type="didSync", did=did)
            assert "stalled" not in op

            async def stalled():
                current = await client.status(op["id"])
                return current if current.get("stalled") else None

            seen = await eventually(stalled, timeout=10, what="the stalled flag")
            assert seen["status"] == "running" and seen["updatedAt"] == op["startedAt"]
            parts.append(
                asyncio.create_task(bootstrap.run_workers(settings, event_log, ["didSync"], stop))
            )
            done = await client.wait_finished(op["id"])
            assert done["status"] == "completed" and done["recordsProcessed"] == 40
            assert "stalled" not in done
        finally:
            await client.close()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*parts), 30)
