"""Alerts: the history with its filters, one alert, acknowledgement with a comment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query

from api.deps import ALL_ROLES, Caller, State, allow, not_found
from api.params import Cursor, Limit, aware, int_cursor, invalid, since
from api.schemas import AckIn, AlertOut, AlertPage, Problem
from api.tokens import Role
from core.text import safe_text
from notify import outbox, silences
from rules import lifecycle

router = APIRouter(
    prefix="/api/v1",
    tags=["alerts"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

AlertReader = Annotated[Caller, Depends(allow(*ALL_ROLES))]


MAX_SUBJECTS = 100


def _names(values: list[str] | None, name: str) -> set[str] | None:
    if values is None:
        return None
    if len(values) > MAX_SUBJECTS:
        raise invalid("query", name, f"at most {MAX_SUBJECTS} values of '{name}'")
    for value in values:
        if "\x00" in value or len(value) > 200:
            raise invalid("query", name, f"'{name}' is not a name this network uses")
    return set(values)


def _subject_filter(
    caller: Caller,
    subjects: set[str] | None,
    exchange: str | None,
    partner: str | None,
) -> list[str] | None:
    """The alert subjects the caller may see and asked for (None: any)."""
    scope, net = caller.scope, caller.network
    wanted: set[str] | None = None if scope.everything else set(scope.subjects())

    def narrow(allowed: set[str]) -> None:
        nonlocal wanted
        wanted = allowed if wanted is None else wanted & allowed

    if subjects is not None:
        narrow(subjects)
    if exchange is not None:
        found = next((e for e in net.exchanges if e.id == exchange), None)
        narrow({exchange, *found.sent, *found.received} if found else set())
    if partner is not None:
        # an alert's partners: a meter's owner, an exchange's two ends, the partner itself
        mine = {partner} | {m.id for m in net.meters if m.partner == partner}
        mine |= {e.id for e in net.exchanges if partner in (e.provider, e.receiver)}
        narrow(mine)
    return None if wanted is None else sorted(wanted)


async def alert_views(state: State, caller: Caller, rows: list[Any]) -> list[dict[str, Any]]:
    """Alerts as the caller may see them, with the silence muting each (not for partners)."""
    views = [lifecycle.alert_view(r) for r in rows]
    if caller.scope.everything and views:
        for view, muting in zip(
            views, await silences.silenced_by(state.pool, rows, datetime.now(UTC)), strict=True
        ):
            view["silenced_by"] = muting.id if muting else None
    return [caller.scope.redact_alert(v) for v in views]


@router.get("/alerts", response_model=AlertPage)
async def alerts(
    state: State,
    caller: AlertReader,
    status: Literal["firing", "resolved"] | None = None,
    rule: Annotated[str | None, Query(max_length=64)] = None,
    severity: Literal["warning", "critical"] | None = None,
    subject: Annotated[
        list[str] | None, Query(description="its exchange, meter or partner (repeatable)")
    ] = None,
    exchange: Annotated[
        str | None,
        Query(max_length=200, description="about this exchange or a meter measuring it"),
    ] = None,
    partner: Annotated[
        str | None,
        Query(
            max_length=200,
            description="about this partner, a meter it owns or an exchange it is an end of",
        ),
    ] = None,
    since_: Annotated[datetime | None, Query(alias="since", description="started at or after")] = (
        None
    ),
    until: Annotated[datetime | None, Query(description="started before")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Alerts, newest first; a partner sees those about its exchanges, meters and itself."""
    scope = caller.scope
    for name, value in (("rule", rule), ("exchange", exchange), ("partner", partner)):
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise invalid("query", name, f"'{name}' holds a NUL character")
    start, end = since(since_), aware(until, "until")
    if start is not None and end is not None and start >= end:
        raise invalid("query", "until", "'until' must be after 'since'")
    subjects = _subject_filter(caller, _names(subject, "subject"), exchange, partner)
    rows = await state.pool.fetch(
        "SELECT * FROM alerts WHERE ($1::text IS NULL OR status = $1)"
        " AND ($2::text IS NULL OR rule = $2)"
        " AND ($3::timestamptz IS NULL OR started_at >= $3)"
        " AND ($4::bigint IS NULL OR id < $4)"
        " AND ($5::text[] IS NULL OR subject = ANY($5::text[]))"
        " AND ($7::timestamptz IS NULL OR started_at < $7)"
        " AND ($8::text IS NULL OR severity = $8)"
        " ORDER BY id DESC LIMIT $6",
        status,
        rule,
        start,
        int_cursor(cursor),
        subjects,
        limit + 1,
        end,
        severity,
    )
    # Subjects are unique across kinds only by convention: check the kind too.
    rows = [r for r in rows if scope.sees_alert(r["subject"], r["subject_kind"])]
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": await alert_views(state, caller, rows),
        "next_cursor": str(rows[-1]["id"]) if more else None,
    }


async def _visible(state: State, caller: Caller, alert_id: int) -> Any:
    row = await state.pool.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
    if row is None or not caller.scope.sees_alert(row["subject"], row["subject_kind"]):
        raise not_found("alert", str(alert_id))
    return row


@router.get("/alerts/{alert_id}", response_model=AlertOut)
async def alert(alert_id: int, state: State, caller: AlertReader) -> dict[str, Any]:
    if not 1 <= alert_id < 2**63:
        raise not_found("alert", str(alert_id))
    row = await _visible(state, caller, alert_id)
    return (await alert_views(state, caller, [row]))[0]


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut)
async def acknowledge(
    alert_id: int,
    state: State,
    caller: Annotated[Caller, Depends(allow(Role.admin, Role.operator))],
    body: Annotated[AckIn | None, Body()] = None,
) -> dict[str, Any]:
    """Acknowledge, with an optional comment; who is the token's name. Idempotent: a second
    acknowledgement changes nothing. The acknowledgement is an event for the integrations."""
    if not 1 <= alert_id < 2**63:
        raise not_found("alert", str(alert_id))
    comment = (body.comment or "").strip() if body else ""
    if "\x00" in comment:
        raise invalid("body", "comment", "the comment holds a NUL character")
    await _visible(state, caller, alert_id)
    settings = state.settings

    def targets(alert: dict[str, Any]) -> list[tuple[str, str]]:
        return list(outbox.alert_targets(settings, alert))

    async with state.pool.acquire() as conn:
        row = await lifecycle.acknowledge(
            conn,
            alert_id,
            caller.name,
            datetime.now(UTC),
            comment=safe_text(comment) or None,
            targets=targets,
        )
    if row is None:
        raise not_found("alert", str(alert_id))
    return (await alert_views(state, caller, [row]))[0]
