"""Query parameters shared by several endpoints, validated to 422 (never a 500).

Every 422 has FastAPI's validation-error shape (``detail``: a list of ``{loc, msg, type}``),
whether pydantic or a check here found the problem, so clients parse one format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query
from fastapi.exceptions import RequestValidationError

from core.text import safe_text

MAX_SPAN = timedelta(days=800)


def invalid(where: str, name: str | int, message: str, value: Any = None) -> RequestValidationError:
    """A 422 naming the parameter (``where``: query, path or body) and what is wrong."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (where, name), "msg": message, "input": value}]
    )


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise invalid(
            "query", name, f"'{name}' needs a UTC offset (RFC 3339, e.g. 2026-10-01T00:00:00Z)"
        )
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise invalid("query", name, f"'{name}' is out of range: {exc}") from None


@dataclass(frozen=True, slots=True)
class Span:
    start: datetime
    end: datetime


async def span(  # async: a plain ``def`` dependency would run in FastAPI's thread pool
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
        raise invalid("query", "from", "'from' is after 'to'")
    if end - start > MAX_SPAN:
        raise invalid("query", "from", f"the span from 'from' to 'to' is over {MAX_SPAN.days} days")
    return Span(start, end)


def since(value: datetime | None) -> datetime | None:
    return _aware(value, "since")


def aware(value: datetime | None, name: str) -> datetime | None:
    """A time parameter in UTC; a 422 naming ``name`` when it has no offset."""
    return _aware(value, name)


# Digits are ASCII digits: ``str.isdigit``, ``int()`` and ``\d`` also take other scripts'
# digits ("２０２６"), which no client means and no cursor or month this API gives holds.
_CURSOR = re.compile(r"[0-9]{1,18}", re.ASCII)
_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}", re.ASCII)


def int_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if _CURSOR.fullmatch(cursor) is None:
        raise invalid("query", "cursor", "'cursor' is not a cursor this API gave")
    return int(cursor)


def month(text: str, where: str = "path", name: str = "month") -> tuple[int, int]:
    """``YYYY-MM`` in ASCII digits, 2000-01 to 2999-12 → (year, month); else a 422."""
    if _MONTH.fullmatch(text) is None:
        raise invalid(where, name, f"bad month {safe_text(text, 40)!r} (use YYYY-MM, e.g. 2026-10)")
    year, mon = int(text[:4]), int(text[5:])
    if not 1 <= mon <= 12:
        raise invalid(where, name, f"bad month {text!r}: no month {mon}")
    if not 2000 <= year <= 2999:
        raise invalid(where, name, f"month {text!r} is out of range (2000-01 to 2999-12)")
    return year, mon


def ts_cursor(cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    try:
        value = datetime.fromisoformat(cursor)
    except ValueError:
        raise invalid("query", "cursor", "'cursor' is not a cursor this API gave") from None
    return _aware(value, "cursor")


Limit = Annotated[int, Query(ge=1, le=10_000, description="at most this many items")]
Cursor = Annotated[str | None, Query(max_length=64, description="`next_cursor` of the last page")]
