"""A worker process's allowance of requests to sources: per PDS and overall, across all the
operations it runs."""

from __future__ import annotations

import asyncio

import pytest

from services.workers.source_slots import SourceSlots

pytestmark = pytest.mark.unit


async def test_requests_stay_within_both_bounds_and_a_busy_pds_holds_no_one_back():
    slots = SourceSlots(overall=3, per_pds=2)
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    total_most = 0
    gates = {"busy": asyncio.Event(), "other": asyncio.Event()}

    async def request(pds: str) -> None:
        nonlocal total_most
        async with slots.held(pds):
            inside[pds] = inside.get(pds, 0) + 1
            most[pds] = max(most.get(pds, 0), inside[pds])
            total_most = max(total_most, sum(inside.values()))
            await gates[pds].wait()
            inside[pds] -= 1

    # Ten requests queue on the busy PDS first; the other PDS still gets its slot.
    tasks = [asyncio.create_task(request("busy")) for _ in range(10)]
    tasks.append(asyncio.create_task(request("other")))
    for _ in range(5):
        await asyncio.sleep(0)  # let every task reach its semaphore (ordering, not timing)
    assert inside == {"busy": 2, "other": 1}
    gates["busy"].set()
    gates["other"].set()
    await asyncio.gather(*tasks)
    assert most == {"busy": 2, "other": 1} and total_most == 3
    # Nothing is kept for PDSes no one talks to any more.
    assert slots._per_pds == {} and slots._users == {}
