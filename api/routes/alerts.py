"""Alerts: list, one, acknowledge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from api.deps import ALL_ROLES, Caller, State, allow, not_found
from api.params import Cursor, Limit, int_cursor, invalid, since
from api.schemas import AlertOut, AlertPage, Problem
from api.tokens import Role
from notify import outbox
from rules import lifecycle

router = APIRouter(
    prefix="/api/v1",
    tags=["alerts"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

AlertReader = Annotated[Caller, Depends(allow(*ALL_ROLES))]


@router.get("/alerts", response_model=AlertPage)
async def alerts(
    state: State,
    caller: AlertReader,
    status: Literal["firing", "resolved"] | None = None,
    rule: Annotated[str | None, Query(max_length=64)] = None,
    since_: Annotated[datetime | None, Query(alias="since", description="started at or after")] = (
        None
    ),
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Alerts, newest first; a partner sees those about its exchanges, meters and itself."""
    scope = caller.scope
    if rule is not None and "\x00" in rule:  # PostgreSQL text cannot hold NUL: no rule has one
        raise invalid("query", "rule", "'rule' holds a NUL character")
    subjects = None if scope.everything else list(scope.subjects())
    rows = await state.pool.fetch(
        "SELECT * FROM alerts WHERE ($1::text IS NULL OR status = $1)"
        " AND ($2::text IS NULL OR rule = $2)"
        " AND ($3::timestamptz IS NULL OR started_at >= $3)"
        " AND ($4::bigint IS NULL OR id < $4)"
        " AND ($5::text[] IS NULL OR subject = ANY($5::text[]))"
        " ORDER BY id DESC LIMIT $6",
        status,
        rule,
        since(since_),
        int_cursor(cursor),
        subjects,
        limit + 1,
    )
    # Subjects are unique across kinds only by convention: check the kind too.
    rows = [r for r in rows if scope.sees_alert(r["subject"], r["subject_kind"])]
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [scope.redact_alert(lifecycle.alert_view(r)) for r in rows],
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
    return caller.scope.redact_alert(lifecycle.alert_view(await _visible(state, caller, alert_id)))


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut)
async def acknowledge(
    alert_id: int,
    state: State,
    caller: Annotated[Caller, Depends(allow(Role.admin, Role.operator))],
) -> dict[str, Any]:
    """Acknowledge (idempotent); the acknowledgement is an event for the integrations."""
    if not 1 <= alert_id < 2**63:
        raise not_found("alert", str(alert_id))
    await _visible(state, caller, alert_id)
    settings = state.settings

    def targets(alert: dict[str, Any]) -> list[tuple[str, str]]:
        return list(outbox.alert_targets(settings, alert))

    async with state.pool.acquire() as conn:
        row = await lifecycle.acknowledge(
            conn, alert_id, caller.name, datetime.now(UTC), targets=targets
        )
    if row is None:
        raise not_found("alert", str(alert_id))
    return caller.scope.redact_alert(lifecycle.alert_view(row))
