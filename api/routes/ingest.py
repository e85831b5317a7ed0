"""HTTP ingestion for devices without MQTT: the same payloads, parser and writer as MQTT.

The response comes after the commit, as MQTT's PUBACK does: a 200 means the readings (and
any rejections) are stored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.deps import Caller, State, allow, not_found
from api.schemas import IngestResult, Problem
from api.tokens import Role
from ingest.parse import TOPIC_PREFIX, NetworkIndex, Parser
from ingest.writer import Message

router = APIRouter(
    prefix="/api/v1",
    tags=["ingest"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

_PAYLOAD_DOC = {
    "description": "one reading `{ts, value, unit?}`, a JSON array of them, or SenML (RFC 8428)",
    "content": {"application/json": {"schema": {}}},
}


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


@router.post(
    "/readings/{partner_id}/{meter_id}",
    response_model=IngestResult,
    openapi_extra={"requestBody": _PAYLOAD_DOC},
)
async def post_readings(
    partner_id: str,
    meter_id: str,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(allow(Role.admin, Role.partner))],
) -> Any:
    """Store readings as if published on `symbiont/readings/{partner}/{meter}` (SPEC §3).
    A partner token may post only for its own partner."""
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
    parsed = parser.parse(f"{TOPIC_PREFIX}{partner_id}/{meter_id}", payload, now)
    async with state.write_lock:
        result = await state.writer.write([Message(parsed, now)], parser.index)
    rejected = [{"reason": r.reason.value, "detail": r.detail} for r in parsed.rejections]
    conflicts = result.rejections.get("conflict", 0)
    rejected += [
        {"reason": "conflict", "detail": "a different value is stored for this (meter, ts)"}
    ] * conflicts
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
