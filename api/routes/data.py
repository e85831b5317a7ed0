"""Readings, reconciled exchange windows and their daily or monthly sums, network
reconciliations and rejected messages."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.deps import READERS, Caller, State, allow, not_found
from api.params import Cursor, Limit, Span, int_cursor, since, span, ts_cursor
from api.schemas import (
    BalanceList,
    Problem,
    ReadingPage,
    ReconciliationPage,
    RejectionPage,
    WindowList,
)
from api.scope import Scope
from core.network import CANONICAL_UNIT, Kind
from core.units import canonical_unit

router = APIRouter(
    prefix="/api/v1",
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

Reader = Annotated[Caller, Depends(allow(*READERS))]


@router.get("/meters/{meter_id}/readings", response_model=ReadingPage, tags=["data"])
async def readings(
    meter_id: str,
    state: State,
    caller: Reader,
    period: Annotated[Span, Depends(span)],
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Readings in canonical units, oldest first; `next_cursor` pages on."""
    if meter_id not in caller.scope.meters:
        raise not_found("meter", meter_id)
    meter = caller.network.meter(meter_id)
    after = ts_cursor(cursor)
    rows = await state.pool.fetch(
        "SELECT ts, value FROM readings WHERE meter_id = $1 AND ts >= $2 AND ts < $3"
        " AND ($4::timestamptz IS NULL OR ts > $4) ORDER BY ts LIMIT $5",
        meter_id,
        period.start,
        period.end,
        after,
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "meter": meter_id,
        "unit": canonical_unit(meter.kind, meter.reading),
        "items": [{"ts": r["ts"], "value": r["value"]} for r in rows],
        "next_cursor": rows[-1]["ts"].isoformat() if more else None,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


_WINDOWS = """
SELECT window_start, window_end, sent, received, loss, imbalance, sigma, z, coverage, status
FROM exchange_windows
WHERE exchange_id = $1 AND window_start >= $2 AND window_start < $3
ORDER BY window_start
"""


@router.get("/exchanges/{exchange_id}/windows", response_model=WindowList, tags=["data"])
async def windows(
    exchange_id: str, state: State, caller: Reader, period: Annotated[Span, Depends(span)]
) -> Response:
    """Reconciled windows starting in [from, to)."""
    if exchange_id not in caller.scope.exchanges:
        raise not_found("exchange", exchange_id)
    ex = next(e for e in caller.network.exchanges if e.id == exchange_id)
    unit = CANONICAL_UNIT[Kind(ex.kind)]

    async def query() -> bytes:
        rows = await state.pool.fetch(_WINDOWS, exchange_id, period.start, period.end)
        body = {
            "exchange": exchange_id,
            "unit": unit,
            "items": [
                {
                    "start": r["window_start"],
                    "end": r["window_end"],
                    "sent": _finite(r["sent"]),
                    "received": _finite(r["received"]),
                    "loss": r["loss"],
                    "imbalance": _finite(r["imbalance"]),
                    "sigma": _finite(r["sigma"]),
                    "z": _finite(r["z"]),
                    "coverage": r["coverage"],
                    "status": r["status"],
                }
                for r in rows
            ],
        }
        # A month is 720+ windows: checking them against WindowList and serializing them
        # through pydantic took over 40 % of the request's CPU (benchmarks/api_latency.py).
        # The rows have the schema's shape and types already, so orjson writes them; the
        # bytes are the same.
        return orjson.dumps(body, option=orjson.OPT_UTC_Z)

    # The same history is asked for again and again (dashboards, integrations): its bytes
    # are kept until the exchange's windows change (api/wcache.py).
    body = await state.hub.windows_cache.get((exchange_id, period.start, period.end), query)
    return Response(body, media_type="application/json")


# Sums per local day or month.  A meter's error is mostly a bias of its accuracy class, so the
# windows' sigmas are added as fully correlated (Σσ), a conservative bound on the sum's sigma.
_BALANCE = """
SELECT date_trunc($4, window_start AT TIME ZONE $5) AS bucket,
       min(window_start) AS first_start, max(window_end) AS last_end, count(*) AS windows,
       sum(sent) AS sent, sum(received) AS received, min(loss) AS loss,
       sum(imbalance) FILTER (WHERE imbalance IS NOT NULL) AS imbalance,
       sum(sigma) FILTER (WHERE imbalance IS NOT NULL) AS sigma,
       avg(coverage) AS coverage,
       count(*) FILTER (WHERE status = 'imbalance') AS imbalance_windows,
       count(*) FILTER (WHERE status IN ('incomplete', 'no_data')) AS incomplete_windows,
       count(*) FILTER (WHERE status = 'error') AS error_windows
FROM exchange_windows
WHERE exchange_id = $1 AND window_start >= $2 AND window_start < $3
GROUP BY bucket ORDER BY bucket
"""


@router.get("/exchanges/{exchange_id}/balance", response_model=BalanceList, tags=["data"])
async def balance(
    exchange_id: str,
    state: State,
    caller: Reader,
    period: Annotated[Span, Depends(span)],
    interval: Annotated[Literal["day", "month"], Query()] = "day",
) -> dict[str, Any]:
    """The windows summed per day or month of the network's time zone."""
    if exchange_id not in caller.scope.exchanges:
        raise not_found("exchange", exchange_id)
    net = caller.network
    ex = next(e for e in net.exchanges if e.id == exchange_id)
    rows = await state.pool.fetch(
        _BALANCE, exchange_id, period.start, period.end, interval, net.timezone
    )
    items = []
    for r in rows:
        d, sigma = _finite(r["imbalance"]), _finite(r["sigma"])
        items.append(
            {
                "start": r["first_start"],
                "end": r["last_end"],
                "windows": r["windows"],
                "sent": _finite(r["sent"]),
                "received": _finite(r["received"]),
                "loss": r["loss"],
                "imbalance": d,
                "sigma": sigma,
                "z": d / sigma if d is not None and sigma else None,
                "coverage": r["coverage"],
                "imbalance_windows": r["imbalance_windows"],
                "incomplete_windows": r["incomplete_windows"],
                "error_windows": r["error_windows"],
            }
        )
    return {
        "exchange": exchange_id,
        "unit": CANONICAL_UNIT[Kind(ex.kind)],
        "interval": interval,
        "timezone": net.timezone,
        "items": items,
    }


_RECONCILIATIONS = """
SELECT r.id, r.component, r.window_start, r.window_end, r.statistic, r.dof, r.critical,
       r.passed, r.suspects,
       coalesce(array_agg(m.meter_id ORDER BY m.meter_id)
                FILTER (WHERE m.meter_id IS NOT NULL), '{}') AS meter_ids,
       array_agg(m.measured ORDER BY m.meter_id) AS measured,
       array_agg(m.reconciled ORDER BY m.meter_id) AS reconciled,
       array_agg(m.adjustment ORDER BY m.meter_id) AS adjustment,
       array_agg(m.z ORDER BY m.meter_id) AS z,
       array_agg(m.suspect ORDER BY m.meter_id) AS suspect
FROM reconciliations r
LEFT JOIN reconciliation_meters m ON m.reconciliation_id = r.id
WHERE r.window_start >= $1 AND r.window_start < $2 AND ($3::bigint IS NULL OR r.id > $3)
GROUP BY r.id
ORDER BY r.id
LIMIT $4
"""


@router.get("/reconciliations", response_model=ReconciliationPage, tags=["data"])
async def reconciliations(
    state: State,
    caller: Reader,
    period: Annotated[Span, Depends(span)],
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Network reconciliation per connected component and window: the global χ² test and, per
    meter, measured and reconciled quantities, adjustment, z and suspect.  A partner sees the
    components made only of meters behind its own exchanges and its own meters."""
    after = int_cursor(cursor)
    visible = caller.scope.exchange_meters
    items: list[dict[str, Any]] = []
    last_id: int | None = None
    more = False
    batch = limit + 1
    while True:  # a partner's filter may drop rows: read on until the page is full
        rows = await state.pool.fetch(_RECONCILIATIONS, period.start, period.end, after, batch)
        for r in rows:
            after = r["id"]
            if not caller.scope.everything and not set(r["meter_ids"]) <= visible:
                continue
            if len(items) == limit:
                more = True
                break
            last_id = r["id"]
            items.append(caller.scope.redact(_reconciliation(r)))
        if more or len(rows) < batch:
            break
    return {"items": items, "next_cursor": str(last_id) if more else None}


def _reconciliation(r: Any) -> dict[str, Any]:
    return {
        "component": r["component"],
        "start": r["window_start"],
        "end": r["window_end"],
        "statistic": _finite(r["statistic"]),
        "dof": r["dof"],
        "critical": _finite(r["critical"]),
        "passed": r["passed"],
        "suspects": list(r["suspects"]),
        "meters": [
            {
                "meter": mid,
                "measured": _finite(r["measured"][i]),
                "reconciled": _finite(r["reconciled"][i]),
                "adjustment": _finite(r["adjustment"][i]),
                "z": _finite(r["z"][i]),
                "suspect": bool(r["suspect"][i]),
            }
            for i, mid in enumerate(r["meter_ids"])
        ],
    }


@router.get("/rejections", response_model=RejectionPage, tags=["data"])
async def rejections(
    state: State,
    caller: Reader,
    partner: Annotated[str | None, Query(max_length=64)] = None,
    since_: Annotated[datetime | None, Query(alias="since")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Rejected messages, newest first, with the reason and the start of the payload.  A
    partner sees only its own (and asking for another partner's gets 404), and a meter of
    another partner it named as `unknown_meter`, exactly as one that does not exist."""
    scope = caller.scope
    if partner is not None and partner not in scope.partners:
        raise not_found("partner", partner)
    if not scope.everything:
        partner = scope.partner
    before = int_cursor(cursor)
    rows = await state.pool.fetch(
        "SELECT id, received_at, topic, partner_id, meter_id, reason, detail,"
        " substring(payload FROM 1 FOR 4096) AS payload FROM rejections"
        " WHERE ($1::text IS NULL OR partner_id = $1)"
        " AND ($2::timestamptz IS NULL OR received_at >= $2)"
        " AND ($3::bigint IS NULL OR id < $3)"
        " ORDER BY id DESC LIMIT $4",
        partner,
        since(since_),
        before,
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_rejection(scope, r) for r in rows],
        "next_cursor": str(rows[-1]["id"]) if more else None,
    }


def _rejection(scope: Scope, r: Any) -> dict[str, Any]:
    # A partner sees another partner's meter named under its topic as an unknown one.
    reason, detail, meter = scope.rejection(r["reason"], r["detail"], r["meter_id"])
    return {
        "id": r["id"],
        "received_at": r["received_at"],
        "topic": r["topic"],
        "partner": r["partner_id"],
        "meter": meter,
        "reason": reason,
        "detail": detail,
        "payload": bytes(r["payload"]).decode("utf-8", "replace")
        if r["payload"] is not None
        else None,
    }
