"""A client of this service's own XRPC API, for the CLI: every call carries a service-auth
token for its method (minted by a signer, or one given), and an XRPC error comes back as
AdminCallFailed with the error's name and message."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
HISTORY = "pub.chive.admin.getBackfillHistory"
CANCEL = "pub.chive.admin.cancelBackfill"
FINISHED = ("completed", "failed", "cancelled")

# A token for one method (its lxm).
Signer = Callable[[str], str]


class AdminCallFailed(RuntimeError):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}" if message else error)
        self.error = error


class AdminClient:
    def __init__(self, base_url: str, signer: Signer, timeout_s: float = 30.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._signer = signer

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._http.aclose()

    async def _call(self, method: str, *, params=None, body=None) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self._signer(method)}"}
        try:
            if body is None:
                response = await self._http.get(f"/xrpc/{method}", params=params, headers=headers)
            else:
                response = await self._http.post(f"/xrpc/{method}", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise AdminCallFailed("Unreachable", f"{self._http.base_url}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            raise AdminCallFailed(f"HTTP{response.status_code}", response.text[:200]) from None
        if response.status_code != 200:
            raise AdminCallFailed(
                str(data.get("error", response.status_code)), data.get("message", "")
            )
        return data

    async def trigger(self, **params: Any) -> dict[str, Any]:
        return (await self._call(TRIGGER, body=params))["operation"]

    async def status(self, op_id: str) -> dict[str, Any]:
        return (await self._call(STATUS, params={"id": op_id}))["operation"]

    async def running(self) -> list[dict[str, Any]]:
        return (await self._call(STATUS, params={"status": "running", "limit": 100}))["operations"]

    async def history(self, limit: int, backfill_type: str | None = None) -> list[dict[str, Any]]:
        params = {"limit": limit, **({"type": backfill_type} if backfill_type else {})}
        return (await self._call(HISTORY, params=params))["operations"]

    async def cancel(self, op_id: str) -> bool:
        return (await self._call(CANCEL, body={"id": op_id}))["success"]

    async def watch(
        self, op_id: str, show: Callable[[dict[str, Any]], None], interval_s: float = 0.5
    ) -> dict[str, Any]:
        """Show the operation each time it changes, until it finishes; its final state."""
        last: dict[str, Any] | None = None
        while True:
            op = await self.status(op_id)
            if op != last:
                show(op)
                last = op
            if op["status"] in FINISHED:
                return op
            await asyncio.sleep(interval_s)


def describe(op: dict[str, Any]) -> str:
    """One line for people: id, type, status, records (and percent), error."""
    count = f"{op.get('recordsProcessed', 0)} records"
    if "progress" in op:
        count += f" ({op['progress']}%)"
    extra = ""
    if op.get("stalled"):
        extra += " STALLED"
    if op.get("error"):
        extra += f": {op['error']}"
    return f"{op['id']} {op['type']:18s} {op['status']:9s} {count}{extra}"


def progress_bar(op: dict[str, Any], width: int = 30) -> str:
    percent = op.get("progress")
    if percent is None:
        return f"[{'?' * width}] {describe(op)}"
    filled = width * percent // 100
    return f"[{'#' * filled}{'.' * (width - filled)}] {describe(op)}"


def printer(tty: bool) -> Callable[[dict[str, Any]], None]:
    """On a terminal a bar redrawn in place; elsewhere a line per change."""
    started = time.monotonic()

    def show(op: dict[str, Any]) -> None:
        if tty:
            end = "\n" if op["status"] in FINISHED else ""
            elapsed = f" {time.monotonic() - started:5.0f}s"
            sys.stdout.write("\r\033[K" + progress_bar(op) + elapsed + end)
            sys.stdout.flush()
        else:
            print(describe(op), flush=True)

    return show
