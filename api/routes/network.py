"""Who am I, the network, and the live view (snapshot and server-sent events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from api.deps import ALL_ROLES, READERS, Caller, State, allow
from api.live import Event
from api.schemas import Live, NetworkOut, Problem, WhoAmI
from core.network import CANONICAL_UNIT, Kind
from core.units import canonical_unit

router = APIRouter(prefix="/api/v1", responses={401: {"model": Problem}, 403: {"model": Problem}})


@router.get("/whoami", response_model=WhoAmI, tags=["auth"])
async def whoami(caller: Annotated[Caller, Depends(allow(*ALL_ROLES))]) -> dict[str, Any]:
    p = caller.principal
    return {"role": p.role.value, "partner": p.partner, "token_id": p.token_id, "name": caller.name}


@router.get("/network", response_model=NetworkOut, tags=["network"])
async def network(caller: Annotated[Caller, Depends(allow(*READERS))]) -> dict[str, Any]:
    """Partners, meters, exchanges and balances; a partner sees its own part."""
    net, scope = caller.network, caller.scope
    windows = net.meter_windows()
    partners_seen = set(scope.partners)
    exchanges = [e for e in net.exchanges if e.id in scope.exchanges]
    for e in exchanges:  # a partner sees who its counterparties are
        partners_seen.update((e.provider, e.receiver))
    return {
        "id": net.network,
        "name": net.name,
        "timezone": net.timezone,
        "currency": net.currency,
        "partners": [{"id": p.id, "name": p.name} for p in net.partners if p.id in partners_seen],
        "meters": [
            {
                "id": m.id,
                "partner": m.partner,
                "kind": m.kind,
                "medium": m.medium,
                "reading": m.reading,
                "unit": canonical_unit(m.kind, m.reading),
                "uncertainty": m.uncertainty,
                "interval_s": m.interval,
                "window_s": int(windows[m.id].total_seconds()),
            }
            for m in net.meters
            if m.id in scope.meters
        ],
        "exchanges": [
            {
                "id": e.id,
                "name": e.id.replace("-", " "),
                "provider": e.provider,
                "receiver": e.receiver,
                "kind": e.kind,
                "medium": next((m.medium for m in net.meters if m.id in e.sent and m.medium), None),
                "unit": CANONICAL_UNIT[Kind(e.kind)],
                "loss": e.loss,
                "window_s": int(e.window.total_seconds()),
                "billing": e.billing,
                "nominal": e.nominal,
                "sent_meters": list(e.sent),
                "received_meters": list(e.received),
            }
            for e in exchanges
        ],
        "balances": [
            {
                "id": b.id,
                "kind": b.kind,
                "loss": b.loss,
                "window_s": int(b.window.total_seconds()),
                "in_meters": list(b.in_),
                "out_meters": list(b.out),
            }
            for b in net.balances
            if b.id in scope.balances
        ],
    }


LIVE_ROLES = ALL_ROLES


@router.get("/live", response_model=Live, tags=["live"])
async def live(
    state: State, caller: Annotated[Caller, Depends(allow(*LIVE_ROLES))]
) -> dict[str, Any]:
    """Per exchange the last complete window (rates per hour, status) and open alerts; per meter
    the last reading and its age.  Served from the process's snapshot (see `/live/stream`)."""
    snap = await state.hub.current()
    scope = caller.scope
    now = datetime.now(UTC)
    meters = []
    for m in snap.meters.values():
        if m["id"] not in scope.meters:
            continue
        last = m["last_ts"]
        meters.append({**m, "age_s": (now - last).total_seconds() if last else None})
    return {
        "generated_at": snap.generated_at,
        "exchanges": [e for e in snap.exchanges.values() if e["id"] in scope.exchanges],
        "meters": meters,
        "alerts": [
            scope.redact_alert(a)
            for a in snap.alerts
            if scope.sees_alert(a["subject"], a["subject_kind"])
        ],
    }


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError


def _sse(event: Event) -> bytes:
    data = orjson.dumps(event.data, default=_default)
    return b"event: " + event.kind.encode() + b"\ndata: " + data + b"\n\n"


@router.get(
    "/live/stream",
    tags=["live"],
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "server-sent events: `flow` (an exchange of `/live` changed) and "
            "`alert` (an alert fired, resolved or was acknowledged); `: ping` heartbeats",
        },
        503: {"model": Problem},
    },
)
async def live_stream(
    request: Request, state: State, caller: Annotated[Caller, Depends(allow(*LIVE_ROLES))]
) -> StreamingResponse:
    """Server-sent events, fed by PostgreSQL LISTEN/NOTIFY through the process's live hub.
    The stream ends after `SYMBIONT_LIVE_STREAM_MAX_S`; clients reconnect (and re-read
    `/live`)."""
    sub = state.hub.subscribe(caller.scope)
    if sub is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="too many live streams on this server; retry later",
            headers={"Retry-After": "5"},
        )
    settings = state.settings
    heartbeat = settings.live_heartbeat_s
    deadline = time.monotonic() + settings.live_stream_max_s

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n: connected\n\n"
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    yield b"event: bye\ndata: {}\n\n"
                    return
                try:
                    event = await asyncio.wait_for(sub.queue.get(), min(heartbeat, left))
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": ping\n\n"
                    continue
                yield _sse(event)
        finally:
            state.hub.unsubscribe(sub)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
