"""Who am I, the network, the live view (snapshot and server-sent events) and the meters' states."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from api.deps import ALL_ROLES, READERS, Caller, State, allow
from api.live import Event, exchange_view, meter_view
from api.schemas import Live, MeterList, MeterState, NetworkOut, Problem, WhoAmI
from api.scope import Scope
from api.state import AppState
from core.network import CANONICAL_UNIT, Kind, ReadingType
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
    # An exchange's medium: that of the first of its sent meters in the file that has one.
    medium_of = {m.id: (i, m.medium) for i, m in enumerate(net.meters) if m.medium}
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
                "medium": min(
                    (medium_of[mid] for mid in e.sent if mid in medium_of), default=(0, None)
                )[1],
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
    """Per exchange the current sent and received rates from the meters' latest readings
    (`rates_from`..`rates_to`: the readings they come from), the last complete window
    (`window_start`..`window_end`: status, S, R, Δ = S − R, Δ %, the expected loss l·S, d, σ,
    z) and the open alerts; per meter the last reading, its age, its current rate and its
    state.  A partner sees the states and alerts of its own meters only.  Served from the
    process's snapshot (see `/live/stream`); rates and quantities are rounded to 6
    significant digits."""
    snap = await state.hub.current()
    scope = caller.scope
    now = datetime.now(UTC)
    return {
        "generated_at": snap.generated_at,
        "timezone": caller.network.timezone,
        "exchanges": [
            exchange_view(e, scope) for e in snap.exchanges.values() if e["id"] in scope.exchanges
        ],
        "meters": [meter_view(m, now) for m in snap.meters.values() if m["id"] in scope.meters],
        "alerts": [
            scope.redact_alert(a)
            for a in snap.alerts
            if scope.sees_alert(a["subject"], a["subject_kind"])
        ],
    }


@router.get("/meters", response_model=MeterList, tags=["live"])
async def meters(
    state: State,
    caller: Annotated[Caller, Depends(allow(*LIVE_ROLES))],
    status_: Annotated[
        list[MeterState] | None,
        Query(alias="status", description="only meters in this state (repeatable)"),
    ] = None,
) -> dict[str, Any]:
    """Every meter in scope (a partner: its own) with its last reading, age, current rate and
    state: `offline` while the Sparkplug B node or device it comes from is dead (after its
    NDEATH or DDEATH, until its next birth), `stale`, `stuck` or `suspect` while that alert
    fires on it (`stale_after_s`: the
    silence its meter_stale rule allows), `no_data` (never read), `retired` (removed from the
    network file; its readings are kept), else `ok`."""
    snap = await state.hub.current()
    scope = caller.scope
    now = datetime.now(UTC)
    items = [meter_view(m, now) for m in snap.meters.values() if m["id"] in scope.meters]
    items += await _retired(state, scope)
    if status_:
        items = [m for m in items if m["state"] in status_]
    items.sort(key=lambda m: (m["partner"], m["id"]))
    return {"generated_at": snap.generated_at, "timezone": caller.network.timezone, "items": items}


_RETIRED = """
SELECT m.id, m.partner_id, m.kind, m.reading, m.retired_at, r.ts, r.value
FROM meters m
LEFT JOIN LATERAL (
    SELECT ts, value FROM readings r WHERE r.meter_id = m.id ORDER BY r.ts DESC LIMIT 1
) r ON true
WHERE m.retired_at IS NOT NULL AND ($1::text IS NULL OR m.partner_id = $1)
"""


async def _retired(state: AppState, scope: Scope) -> list[dict[str, Any]]:
    """Meters removed from the network file: kept with their readings, shown as retired."""
    now = datetime.now(UTC)
    rows = await state.pool.fetch(_RETIRED, scope.partner)
    out = []
    for r in rows:
        kind, reading = Kind(r["kind"]), ReadingType(r["reading"])
        last = r["ts"]
        out.append(
            {
                "id": r["id"],
                "partner": r["partner_id"],
                "kind": kind.value,
                "reading": reading.value,
                "unit": canonical_unit(kind, reading),
                "last_ts": last,
                "last_value": r["value"],
                "age_s": round((now - last).total_seconds(), 1) if last else None,
                "rate": None,
                "rate_unit": f"{CANONICAL_UNIT[kind]}/h",
                "rate_from": None,
                "rate_to": None,
                "state": "retired",
                "offline_since": None,
                "stale_after_s": None,
                "open_alerts": 0,
            }
        )
    return out


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
