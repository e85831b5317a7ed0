"""HTTP ingestion for devices without MQTT: the same payloads, parser and writer as MQTT.

The response comes after the commit, as MQTT's PUBACK does: a 200 means the readings (and
any rejections) are stored.  Whatever the body or the path holds, the answer is a 200 or a
422 whose rejections are recorded, never a 5xx: a payload the parser or the writer cannot
handle is itself rejected (``invalid_format``), and only a database that cannot be reached
gives a 503, to be retried.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse

from api.deps import Caller, State, allow, not_found
from api.schemas import IngestResult, Problem
from api.tokens import Role
from core.text import safe_text
from ingest.parse import KEEP_PAYLOAD, TOPIC_PREFIX, NetworkIndex, Parsed, Parser, Reason, Rejection
from ingest.writer import BatchResult, BatchWriter, Message

log = logging.getLogger("symbiont.api.ingest")

router = APIRouter(
    prefix="/api/v1",
    tags=["ingest"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

_PAYLOAD_DOC = {
    "description": "one reading `{ts, value, unit?}`, a JSON array of them, or SenML (RFC 8428)",
    "content": {"application/json": {"schema": {}}},
}

# The database (or the way to it) failing, not the message: the client should retry.
_OUTAGE = (
    OSError,  # TimeoutError and refused connections among them
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # deadlock or serialization failure
)

UNREADABLE = "the payload could not be read as a reading, a batch of readings or SenML"
MAX_TOPIC, MAX_DETAIL = 1024, 2000


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, cut one byte past ``limit`` so an oversized one is rejected as too large
    without being held in memory whole."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


def _unreadable(topic: str, partner: str, payload: bytes) -> Parsed:
    """The whole message rejected as one, for when parsing or storing it failed."""
    parsed = Parsed(topic, partner)
    parsed.rejections.append(
        Rejection(Reason.invalid_format, UNREADABLE, partner, None, payload[:KEEP_PAYLOAD])
    )
    return parsed


def _storable(parsed: Parsed) -> Parsed:
    """``parsed`` with every text that came from the request (topic, partner, meter names,
    details) escaped and bounded: NUL and lone surrogates cannot be stored or encoded."""

    def opt(text: str | None) -> str | None:
        return None if text is None else safe_text(text, MAX_TOPIC)

    out = Parsed(safe_text(parsed.topic, MAX_TOPIC), opt(parsed.partner), parsed.readings)
    out.rejections = [
        Rejection(
            r.reason, safe_text(r.detail, MAX_DETAIL), opt(r.partner), opt(r.meter), r.payload
        )
        for r in parsed.rejections
    ]
    return out


async def _outage(writer: BatchWriter, exc: BaseException) -> HTTPException:
    """A 503 for a database that failed, after dropping the writer's connection (it
    connects again for the next message)."""
    log.warning("database unavailable for HTTP ingestion: %s: %s", type(exc).__name__, exc)
    try:
        await writer.close()
    except Exception:  # the connection is gone already: forget it
        writer.conn = None
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="the database is unavailable; nothing was stored, retry later",
        headers={"Retry-After": "5"},
    )


async def _store(
    state: State, parsed: Parsed, index: NetworkIndex, partner: str, payload: bytes, now: float
) -> tuple[Parsed, BatchResult]:
    """Commit ``parsed``; a message the writer fails on for a reason of its own is rejected
    as unreadable instead (the readings it held are not stored, and the answer says so)."""
    writer = state.writer
    async with state.write_lock:
        try:
            return parsed, await writer.write([Message(parsed, now)], index)
        except _OUTAGE as exc:
            raise await _outage(writer, exc) from None
        except Exception:
            log.exception("a message on %s could not be stored; rejecting it", parsed.topic[:200])
        fallback = _unreadable(parsed.topic, partner, payload)
        try:
            return fallback, await writer.write([Message(fallback, now)], index)
        except _OUTAGE as exc:
            raise await _outage(writer, exc) from None
        except Exception:
            # Not even the rejection stores: refuse the message all the same (not a 5xx,
            # which a device would retry for ever), and leave the cause to the log.
            log.exception(
                "the rejection of a message on %s could not be stored", parsed.topic[:200]
            )
            return fallback, BatchResult(messages=1)


@router.post(
    "/readings/{partner_id}/{meter_id}",
    response_model=IngestResult,
    responses={503: {"model": Problem}},
    openapi_extra={"requestBody": _PAYLOAD_DOC},
)
async def post_readings(
    partner_id: str,
    meter_id: str,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(allow(Role.admin, Role.partner))],
) -> Any:
    """Store readings as if published on `symbiont/readings/{partner}/{meter}`.
    A partner token may post only for its own partner, and sees another partner's meter as
    an unknown one."""
    if partner_id not in caller.scope.partners:
        raise not_found("partner", partner_id)
    net = caller.network
    settings = state.settings
    cached = state.ingest_parser
    if cached is None or cached[0] is not net:
        parser = Parser(
            NetworkIndex.from_network(net),
            max_payload=settings.max_payload_bytes,
            backfill_days=settings.backfill_days,
            future_tolerance_s=settings.future_tolerance_s,
        )
        state.ingest_parser = cached = (net, parser)
    parser = cached[1]
    payload = await _read_limited(request, settings.max_payload_bytes)
    now = time.time()
    topic = f"{TOPIC_PREFIX}{partner_id}/{meter_id}"
    try:
        parsed = parser.parse(topic, payload, now)
    except Exception:  # one bad message must never be an error of the server
        log.exception("a message on %s could not be parsed; rejecting it", safe_text(topic, 200))
        parsed = _unreadable(topic, partner_id, payload)
    parsed, result = await _store(state, _storable(parsed), parser.index, partner_id, payload, now)
    # What was recorded, the writer's own rejections (conflicts, a message the database
    # refused) included; the parser's when not even the rejection could be stored.
    recorded = result.recorded if result.recorded or result.inserted else parsed.rejections
    rejected = []
    for r in recorded:
        reason, detail, _ = caller.scope.rejection(r.reason.value, r.detail, r.meter)
        rejected.append({"reason": reason, "detail": detail})
    body = {
        "readings": result.readings,
        "stored": result.inserted,
        "duplicates": result.duplicates,
        "rejected": rejected,
    }
    if not result.inserted and not result.duplicates and rejected:
        return JSONResponse(
            {
                "detail": [
                    {"type": r["reason"], "loc": ["body"], "msg": f"{r['reason']}: {r['detail']}"}
                    for r in rejected
                ]
            },
            status_code=422,
        )
    return body
