"""How a handler works through the record index (freshnessScan, citationExtraction): a page
at a time in uri order, the records of a page handled concurrently, the page's events appended
before its checkpoint moves past it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from events import model
from projections.records import IndexedRecord
from services.workers.context import WorkContext

# What handling one record gave: an outcome (a skip reason, or a word the caller counts) and
# the event to append for it, if any.
Handled = tuple[str, model.RecordEvent | None]


async def each_page(
    ctx: WorkContext,
    after: str,
    next_page: Callable[[str], Awaitable[list[IndexedRecord]]],
    handle: Callable[[IndexedRecord], Awaitable[Handled]],
    on_page: Callable[[list[IndexedRecord], list[Handled]], Awaitable[None]],
) -> None:
    """`next_page(after)` until it is empty; `on_page` records the page in the checkpoint
    (its last uri is where the next page starts) once its events are appended."""
    while True:
        ctx.check_cancelled()
        page = await next_page(after)
        if not page:
            return
        results = await asyncio.gather(*(handle(r) for r in page))
        # Cancelled while the page ran: its results are dropped, the checkpoint stays before it.
        ctx.check_cancelled()
        await ctx.emit_records([event for _, event in results if event is not None])
        after = page[-1].uri
        await on_page(page, results)
