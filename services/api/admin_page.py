"""The admin page, `GET /admin/backfill`: running operations with live progress, the history,
and a form per backfill type. No build step and no CDN: the page and its script are package
data served here. It calls the XRPC methods with a service-auth JWT like any client, and gets
updates pushed from the operations projection over server-sent events
(`/admin/backfill/stream`): an event per operation that changed, as the XRPC view shows it.

In the embedded default (no CHIVE_ADMIN_DIDS: the admin is the local key) a page opened from
this machine can have tokens minted by that key (`/admin/backfill/token`); otherwise an admin
pastes a token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from services.api.app import STATUS, Api
from services.api.auth import ServiceAuth
from services.atproto.errors import XrpcError

ASSETS = {"admin.js": "text/javascript", "admin.css": "text/css"}
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
# A stream sends a comment this often when nothing changed (proxies drop silent streams).
KEEPALIVE_S = 15.0
# A stream ends after this long; the page reconnects (with a fresh token).
STREAM_S = 600.0


def _asset(name: str) -> bytes:
    return resources.files("services.api").joinpath("static", name).read_bytes()


def add_routes(
    app: FastAPI, api: Api, auth: ServiceAuth, mint: Callable[[str], str] | None
) -> None:
    """`mint(lxm)`: a token of the local admin key (embedded default only)."""
    page = _asset("admin.html")

    @app.get("/admin/backfill", include_in_schema=False)
    async def admin_page() -> Response:
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    @app.get("/admin/backfill/static/{name}", include_in_schema=False)
    async def admin_asset(name: str) -> Response:
        if name not in ASSETS:
            return JSONResponse({"error": "NotFound", "message": "no such asset"}, 404)
        return Response(_asset(name), media_type=ASSETS[name])

    @app.post("/admin/backfill/token", include_in_schema=False)
    async def local_token(request: Request) -> Response:
        if mint is None:
            return _error(403, "AdminRequired", "Paste an admin's service-auth token")
        if not _loopback(request.client.host if request.client else ""):
            return _error(403, "AdminRequired", "Local tokens are minted for this machine only")
        # A page under another name that resolves to this machine (DNS rebinding) is not
        # this service's page: it gets no token.
        if (request.url.hostname or "") not in LOCAL_NAMES:
            return _error(403, "AdminRequired", "Local tokens are minted for localhost only")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, "InvalidRequest", "Body must be JSON")
        lxm = body.get("lxm") if isinstance(body, dict) else None
        if lxm not in api.methods:
            return _error(400, "InvalidRequest", "lxm must be one of this service's methods")
        return JSONResponse({"token": mint(lxm)})

    @app.get("/admin/backfill/stream", include_in_schema=False)
    async def stream(request: Request, token: str = "") -> Response:
        client = request.client.host if request.client else "unknown"
        try:
            await auth.require_admin(f"Bearer {token}", STATUS, client)
        except XrpcError as exc:
            return _error(exc.status, exc.error, exc.message)
        return StreamingResponse(
            _changes(api, request),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )


async def _changes(api: Api, request: Request) -> AsyncIterator[bytes]:
    """The running operations and the newest finished ones first, then each one that changes
    (its view), as the API's projection folds events."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + STREAM_S
    sent: dict[str, dict] = {}
    while loop.time() < ends and not await request.is_disconnected():
        for view in await api.watched():
            if sent.get(view["id"]) != view:
                sent[view["id"]] = view
                yield f"event: operation\ndata: {json.dumps(view)}\n\n".encode()
        if not await api.projection.wait_folded(KEEPALIVE_S):
            yield b": keepalive\n\n"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)
