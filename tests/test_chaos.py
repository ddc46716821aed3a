"""Seeded SIGKILLs of the API, the projector and worker replicas while a mixed workload runs,
on both logs. After restarts every operation ends exactly as in an undisturbed run: same
status, same recordsProcessed, same record index, nothing left running; and an audit replay
of the whole log matches the live projections."""

from __future__ import annotations

import json
import random

import pytest

from events.model import BACKFILL_TYPES
from projections.index_reader import FollowingIndex
from services.bootstrap import BESIDE_PROJECTOR
from testkit.broker import free_port
from testkit.harness import (
    Admin,
    Client,
    ServiceProcess,
    run_cli,
    running_service,
    service_env,
    settings_for,
)
from testkit.waiting import eventually

KILLS = {"sqlite": 10, "kafka": 12}


def build_workload(plc, pds_a, pds_b, unique: str) -> list[dict]:
    for i in range(8):
        pds_a.add_repo(
            f"did:plc:a{i}{unique}",
            {"pub.chive.graph.node": 250, "pub.chive.eprint.submission": 150},
        )
    for i in range(4):
        pds_b.add_repo(f"did:plc:b{i}{unique}", {"pub.chive.review.comment": 300})
    homes = {f"did:plc:a{i}{unique}": pds_a.url for i in range(3)}
    homes[f"did:plc:b0{unique}"] = pds_b.url
    for did, home in homes.items():
        plc.register(did, pds_url=home)
    return [
        {"type": "pdsScan", "pdsUrl": pds_a.url},
        {"type": "pdsScan", "pdsUrl": pds_b.url},
        *({"type": "didSync", "did": did} for did in homes),
        {"type": "governanceSync"},
        {"type": "fullReindex", "batchSize": 10},
    ]


def outcome(op: dict) -> tuple:
    # fullReindex counts the record events on the log when it switches: that depends on how
    # far the concurrent scans got (and on re-emitted pages after kills), not on correctness.
    counted = op["type"] != "fullReindex"
    return (
        op["type"],
        json.dumps(op["params"], sort_keys=True),
        op["status"],
        op["recordsProcessed"] if counted else None,
        op.get("error"),
    )


async def run_undisturbed(tmp_path, plc, workload) -> tuple[set, list]:
    admin = Admin()
    settings = settings_for(tmp_path / "calm", admin, plc.url)
    async with running_service(settings, admin) as client:
        ops = [await client.trigger(**body) for body in workload]
        finished = [await client.wait_finished(op["id"], timeout=120) for op in ops]
        index = FollowingIndex(settings.data_dir)
        await index.open()
        total = sum(o["recordsProcessed"] for o in finished if o["type"] == "pdsScan")

        async def all_indexed():
            return (await index.stats())["live"] == total

        await eventually(all_indexed, what="undisturbed index")
        rows = await index.uris()
        await index.close()
    return {outcome(o) for o in finished}, rows


@pytest.mark.parametrize("log_kind", ["sqlite", "kafka"])
async def test_seeded_kills_change_nothing(log_kind, kafka, tmp_path, plc, unique):
    from testkit.servers import FakePds

    pds_a, pds_b = FakePds(plc).start(), FakePds(plc).start()
    try:
        workload = build_workload(plc, pds_a, pds_b, unique)
        expected, expected_rows = await run_undisturbed(tmp_path, plc, workload)
        assert {e[2] for e in expected} == {"completed", "failed"}
        for pds in (pds_a, pds_b):
            pds.faults.delay_s = 0.01  # stretch the work so kills land mid-run
        admin = Admin()
        port = free_port()
        env = service_env(tmp_path / "data", port, plc.url, admin, kafka=kafka, namespace=unique)
        if kafka:
            roles = {"api": ("api",), "projector": ("projector",)}
            # The projector hosts fullReindex: killing it kills a rebuild too.
            for kind in sorted(set(BACKFILL_TYPES) - BESIDE_PROJECTOR):
                roles[f"{kind}-1"] = ("worker", kind)
            roles["pdsScan-2"] = ("worker", "pdsScan")
            roles["didSync-2"] = ("worker", "didSync")
        else:
            roles = {"up": ("up",)}
        procs = {
            name: ServiceProcess(env, tmp_path / f"{name}.log", args)
            for name, args in roles.items()
        }
        for proc in procs.values():
            proc.start()
        client = Client(f"http://127.0.0.1:{port}", admin)
        rng = random.Random(f"chaos-{log_kind}")
        # Every role dies at least once (API, projector, each worker type), then at random.
        schedule = rng.sample(sorted(procs), len(procs))
        schedule += [rng.choice(sorted(procs)) for _ in range(KILLS[log_kind] - len(schedule))]
        kills: list[str] = []
        try:
            await eventually(lambda: client.up(), timeout=30, what="API up")
            ops = [await client.trigger(**body) for body in workload]
            progress = 0
            for victim in schedule:
                progress += rng.randint(150, 450)
                target = progress

                async def reached(target=target) -> bool:
                    if not await client.up():
                        return False
                    listing = await client.get("pub.chive.admin.getBackfillStatus", limit=100)
                    current = listing.json()["operations"]
                    done = all(o["status"] != "running" for o in current)
                    return done or sum(o["recordsProcessed"] for o in current) >= target

                await eventually(reached, timeout=90, what=f"kill point at {target} records")
                procs[victim].kill()
                kills.append(victim)
                procs[victim].start()
            await eventually(lambda: client.up(), timeout=30, what="API up after the last kill")
            finished = [await client.wait_finished(op["id"], timeout=180) for op in ops]
        finally:
            await client.close()
            # Every process is stopped before any exit code is judged: one unclean stop must
            # not leave the others running past the test.
            codes = {n: p.terminate() for n, p in procs.items() if p.proc.poll() is None}
            pds_a.faults.delay_s = pds_b.faults.delay_s = 0
            for name, code in codes.items():
                assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert len(kills) == KILLS[log_kind]
        assert {outcome(o) for o in finished} == expected

        # The projector may have died last: one more start lets it catch up to the log.
        catch_up = ServiceProcess(
            env, tmp_path / "catchup.log", ("projector",) if kafka else ("up",)
        )
        catch_up.start()
        index = FollowingIndex(tmp_path / "data")
        await index.open()
        try:

            async def same_index() -> bool:
                return await index.uris() == expected_rows

            await eventually(same_index, timeout=60, what="record index equal to the calm run")
        finally:
            await index.close()
            catch_up.kill()
        code, out, _ = await run_cli(env, "replay", "--verify")
        summary = json.loads(out.splitlines()[-1])
        assert code == 0 and summary["differences"] == 0, out[-3000:]
        assert summary["operations"] == len(workload)
        print(
            f"chaos[{log_kind}]: {len(kills)} kills ({', '.join(sorted(set(kills)))}), "
            f"{len(finished)} operations checked, {summary['records']} records, "
            f"{summary['differences']} differences"
        )
    finally:
        pds_a.stop()
        pds_b.stop()
