"""The FastAPI application: ``create_app()`` builds it, its lifespan owns the resources.

Resources per process: an asyncpg pool, the network cache, a token cache, the live hub (one
LISTEN connection for every watcher) and a batch writer for HTTP ingestion.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.live import LiveHub
from api.routes import alerts, data, incidents, ingest, network, ops, silences, statements
from api.state import AppState, NetworkCache, NoNetwork, TokenCache
from api.wcache import WindowsCache
from core.db import asyncpg_dsn, create_pool, require_database_url
from core.settings import Settings
from ingest.writer import BatchWriter

log = logging.getLogger("symbiont.api")

STATIC = Path(__file__).resolve().parent / "static"

DESCRIPTION = """\
Monitoring of an industrial symbiosis network: the network, live flows, reconciled
windows, alerts, statements and rejected messages.  Every `/api/v1` call needs
`Authorization: Bearer <token>` (`symbiont token create`).  Roles: `admin` (all),
`operator` (read all, acknowledge alerts), `partner` (its own part; anything else is 404),
`integration` (alerts and live flows).
"""


class MetricsMiddleware:
    """Counts and times every request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500
        timed = False

        def route_name() -> str:
            route = scope.get("route")
            return getattr(route, "path", "unmatched")

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code, timed
            if message["type"] == "http.response.start":
                status_code = message["status"]
                if not timed:
                    timed = True
                    metrics.LATENCY.labels(route_name()).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.REQUESTS.labels(route_name(), str(status_code)).inc()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    dsn = asyncpg_dsn(require_database_url(settings.database_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(
            settings.database_url,
            application_name="symbiont-api",
            min_size=1,
            max_size=settings.api_pool_size,
        )
        cache = NetworkCache()
        hub = LiveHub(
            dsn,
            pool,
            network=lambda: cache.network,
            on_network_change=cache.invalidate,
            max_subscribers=settings.live_max_streams,
            windows_cache=WindowsCache(max_bytes=int(settings.api_windows_cache_mb * 2**20)),
        )
        writer = BatchWriter(dsn, application_name="symbiont-api-ingest")
        state = AppState(settings, pool, cache, TokenCache(), hub, writer)
        app.state.symbiont = state
        try:
            await cache.get(pool)
        except NoNetwork:
            log.warning("no network applied yet: the API answers 503 until one is")
        await hub.start()
        # What is loaded by now (modules, the network, the pool) lives as long as the process.
        # Frozen, it is no longer walked by every full collection of the cyclic GC, which took
        # 120-150 ms each, several times a minute under load (benchmarks/api_latency.py).
        gc.collect()
        gc.freeze()
        log.info("api ready")
        try:
            yield
        finally:
            await hub.stop()
            await writer.close()
            await pool.close()

    app = FastAPI(
        title="symbiont",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "network", "description": "the network file as applied"},
            {"name": "live", "description": "current flows and open alerts"},
            {"name": "data", "description": "readings, windows, reconciliations, rejections"},
            {"name": "alerts"},
            {"name": "statements"},
            {"name": "ingest", "description": "HTTP alternative to MQTT"},
            {"name": "operations", "description": "health, readiness, metrics"},
        ],
    )
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(NoNetwork)
    async def _no_network(_request: Request, exc: NoNetwork) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(OSError)
    async def _database_down(_request: Request, exc: Exception) -> Response:
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the database is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    for module in (ops, network, data, alerts, incidents, silences, statements, ingest):
        app.include_router(module.router)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    async def dashboard() -> Any:
        index = STATIC / "index.html"
        if index.is_file():
            return FileResponse(index, headers={"Cache-Control": "no-cache"})
        return HTMLResponse("<h1>symbiont</h1><p>The dashboard is not installed.</p>")

    @app.get("/favicon.ico", include_in_schema=False, response_model=None)
    async def favicon() -> Any:
        icon = STATIC / "favicon.ico"
        if icon.is_file():
            return FileResponse(icon, media_type="image/x-icon")
        return Response(status_code=404)

    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    return 0
