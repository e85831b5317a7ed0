"""Liveness, readiness and Prometheus metrics (no token needed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import metrics
from api.deps import State
from api.schemas import Health, Ready
from ingest.service import parse_mqtt_url

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, Any]:
    """The process is up and serving."""
    return {"status": "ok"}


async def _broker_reachable(url: str) -> bool:
    target = parse_mqtt_url(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(state: State) -> Any:
    """Ready when the database answers, a network is applied and the broker (when one is
    configured) accepts connections."""
    detail: list[str] = []
    database = network = False
    try:
        async with asyncio.timeout(2.0):
            applied = await state.pool.fetchval("SELECT count(*) FROM network")
        database = True
        network = bool(applied)
        if not network:
            detail.append("no network applied (symbiont network apply FILE)")
    except Exception as exc:  # any failure means not ready, and says why
        detail.append(f"database: {type(exc).__name__}: {exc}")
    broker: bool | None = None
    if state.settings.mqtt_url:
        broker = await _broker_reachable(state.settings.mqtt_url)
        if not broker:
            detail.append("broker: not reachable")
    ready = database and network and broker is not False
    body = {
        "status": "ready" if ready else "not ready",
        "database": database,
        "broker": broker,
        "network": network,
        "detail": detail,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus(state: State) -> Response:
    """Prometheus text format."""
    metrics.STREAMS.set(len(state.hub.subscribers))
    metrics.LIVE_REFRESHES.set(state.hub.refreshes)
    metrics.WINDOWS_CACHE_HITS.set(state.hub.windows_cache.hits)
    metrics.WINDOWS_CACHE_MISSES.set(state.hub.windows_cache.misses)
    metrics.WINDOWS_CACHE_BYTES.set(state.hub.windows_cache.bytes)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
