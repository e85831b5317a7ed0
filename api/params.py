"""Query parameters shared by several endpoints, validated to 422 (never a 500)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import HTTPException, Query, status

MAX_SPAN = timedelta(days=800)


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            detail=f"'{name}' needs a UTC offset (RFC 3339, e.g. 2026-10-01T00:00:00Z)",
        )
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, detail=f"'{name}' is out of range: {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class Span:
    start: datetime
    end: datetime


def span(
    from_: Annotated[
        datetime | None,
        Query(alias="from", description="start, RFC 3339 with offset (default: `to` − 7 days)"),
    ] = None,
    to: Annotated[
        datetime | None, Query(description="end (exclusive), RFC 3339 with offset (default: now)")
    ] = None,
) -> Span:
    end = _aware(to, "to") or datetime.now(UTC)
    start = _aware(from_, "from")
    if start is None:
        try:
            start = end - timedelta(days=7)
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    if start > end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail="'from' is after 'to'")
    if end - start > MAX_SPAN:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            detail=f"the span from 'from' to 'to' is over {MAX_SPAN.days} days",
        )
    return Span(start, end)


def since(value: datetime | None) -> datetime | None:
    return _aware(value, "since")


def int_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail="'cursor' is not valid")
    return int(cursor)


def ts_cursor(cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    try:
        value = datetime.fromisoformat(cursor)
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, detail="'cursor' is not valid"
        ) from None
    return _aware(value, "cursor")


Limit = Annotated[int, Query(ge=1, le=10_000, description="at most this many items")]
Cursor = Annotated[str | None, Query(max_length=64, description="`next_cursor` of the last page")]
