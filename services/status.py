"""The status endpoints every process serves: /healthz (alive), /readyz (ready, or 503 with
the reasons) and /metrics (Prometheus text). The API serves them beside XRPC; a worker or
projector process serves them on CHIVE_STATUS_PORT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from services.health import Health
from services.metrics import CONTENT_TYPE, Metrics

Refresh = Callable[[], Awaitable[None]]


def add_routes(app: FastAPI, health: Health, metrics: Metrics, refresh: list[Refresh]) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        reasons = health.reasons()
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        for step in refresh:
            await step()
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def status_app(health: Health, metrics: Metrics, refresh: list[Refresh]) -> FastAPI:
    app = FastAPI(title="chive-backfill status", docs_url=None, redoc_url=None, openapi_url=None)
    add_routes(app, health, metrics, refresh)
    return app
