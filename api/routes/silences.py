"""Silences: list, create and expire the mutes of alert deliveries (see notify.silences).

Admins and operators make and expire them, integrations may read them, partners see none of
them. The author is the token's name. Expiring (``DELETE``) ends a silence now and keeps it,
as Alertmanager does: it stays the record of what was muted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError

from api.deps import Caller, State, allow, not_found
from api.params import Cursor, Limit, int_cursor
from api.schemas import Problem, SilenceIn, SilenceOut, SilencePage
from api.tokens import Role
from core.text import safe_text
from notify import silences
from rules.alerts import ALERT_RULES

router = APIRouter(
    prefix="/api/v1",
    tags=["alerts"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

SilenceReader = Annotated[Caller, Depends(allow(Role.admin, Role.operator, Role.integration))]
SilenceWriter = Annotated[Caller, Depends(allow(Role.admin, Role.operator))]


async def _views(app: State, items: list[silences.Silence], now: datetime) -> list[dict[str, Any]]:
    counts = await silences.muted_counts(app.pool, [s.id for s in items])
    live = [s for s in items if s.state(now) != "expired"]
    firing: dict[int, list[int]] = {s.id: [] for s in items}
    if live:
        rows = await app.pool.fetch(
            "SELECT id, rule, subject, subject_kind FROM alerts WHERE status = 'firing' ORDER BY id"
        )
        partners = await silences.partners_of(
            app.pool, ((r["subject_kind"], r["subject"]) for r in rows)
        )
        for r in rows:
            alert_labels = silences.labels(
                r["rule"], r["subject"], partners.get((r["subject_kind"], r["subject"]), ())
            )
            for s in live:
                if all(m.matches(alert_labels) for m in s.matchers):
                    firing[s.id].append(r["id"])
    return [
        {**s.as_json(now), "muted_deliveries": counts.get(s.id, 0), "firing_alerts": firing[s.id]}
        for s in items
    ]


@router.get("/silences", response_model=SilencePage)
async def list_silences(
    app: State,
    caller: SilenceReader,
    state: Literal["pending", "active", "expired"] | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Silences, newest first; ``state`` (pending, active, expired) as of now."""
    now = datetime.now(UTC)
    items = await silences.listing(
        app.pool, now, state=state, limit=limit + 1, before=int_cursor(cursor)
    )
    more = len(items) > limit
    items = items[:limit]
    return {
        "items": await _views(app, items, now),
        "next_cursor": str(items[-1].id) if more else None,
    }


@router.get("/silences/{silence_id}", response_model=SilenceOut)
async def get_silence(silence_id: int, app: State, caller: SilenceReader) -> dict[str, Any]:
    found = await silences.get(app.pool, silence_id) if 1 <= silence_id < 2**63 else None
    if found is None:
        raise not_found("silence", str(silence_id))
    return (await _views(app, [found], datetime.now(UTC)))[0]


@router.post("/silences", response_model=SilenceOut, status_code=201)
async def create_silence(body: SilenceIn, app: State, caller: SilenceWriter) -> dict[str, Any]:
    """Mute the deliveries of the alerts every matcher selects, from ``starts_at`` (default
    now) to ``ends_at``. The alerts still fire and are recorded; their events are not sent.
    The author is the token's name."""
    now = datetime.now(UTC)
    starts_at = (body.starts_at or now).astimezone(UTC)
    ends_at = body.ends_at.astimezone(UTC)
    matchers = [(m.name, m.value) for m in body.matchers]
    errors = [
        {"type": "value_error", "loc": ("body", field), "msg": msg, "input": None}
        for field, msg in silences.problems(matchers, starts_at, ends_at, body.comment, now)
    ]
    errors += [
        {"type": "value_error", "loc": ("body", "matchers"), "msg": msg, "input": None}
        for msg in silences.value_problems(matchers, caller.network, ALERT_RULES)
    ]
    if errors:
        raise RequestValidationError(errors)
    created = await silences.create(
        app.pool, matchers, starts_at, ends_at, safe_text(body.comment.strip()), caller.name
    )
    return (await _views(app, [created], now))[0]


@router.delete("/silences/{silence_id}", response_model=SilenceOut)
async def expire_silence(silence_id: int, app: State, caller: SilenceWriter) -> dict[str, Any]:
    """Expire a silence now (idempotent): it stops muting, and is kept with who expired it.
    What it held back of alerts still firing goes out (see the docs)."""
    now = datetime.now(UTC)
    found = (
        await silences.expire(app.pool, silence_id, caller.name, now)
        if 1 <= silence_id < 2**63
        else None
    )
    if found is None:
        raise not_found("silence", str(silence_id))
    return (await _views(app, [found], now))[0]
