"""Time windows cut in the network's time zone (DST-correct).

A window of a day or less starts at local midnight and runs in real (elapsed) time, so a
23-hour spring-forward day has 23 one-hour windows and a 25-hour autumn day has 25.
``local_text`` and ``human_time`` show an instant as people read it, everywhere the same way:
in the network's zone, to the minute, with the zone's UTC offset (``2026-12-04 14:50 +01:00``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

DAY = timedelta(days=1)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) at which ``day`` begins in ``tz``."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def window_bounds(ts: datetime, window: timedelta, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The [start, end) of the window of length ``window`` containing ``ts`` (aware)."""
    local_day = ts.astimezone(tz).date()
    start_of_day = local_midnight(local_day, tz)
    next_day = local_midnight(local_day + DAY, tz)
    if window >= DAY:
        return start_of_day, next_day
    n = (ts - start_of_day) // window
    start = start_of_day + n * window
    return start, min(start + window, next_day)


def window_start(ts: datetime, window: timedelta, tz: ZoneInfo) -> datetime:
    return window_bounds(ts, window, tz)[0]


def windows_between(
    start: datetime, end: datetime, window: timedelta, tz: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    """Every window that overlaps [start, end)."""
    out: list[tuple[datetime, datetime]] = []
    cursor = window_bounds(start, window, tz)[0]
    while cursor < end:
        bounds = window_bounds(cursor, window, tz)
        out.append(bounds)
        cursor = bounds[1]
    return out


def month_bounds(year: int, month: int, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """A calendar month in ``tz`` as UTC instants [start, end)."""
    first = date(year, month, 1)
    following = date(year + (month == 12), month % 12 + 1, 1)
    return local_midnight(first, tz), local_midnight(following, tz)


def utc_month_start(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


def next_month(ts: datetime) -> datetime:
    return datetime(ts.year + (ts.month == 12), ts.month % 12 + 1, 1, tzinfo=ts.tzinfo)


class WindowCutter:
    """Fast ``window_start`` for many instants in one zone: local day bounds are cached per
    15-minute UTC bucket (every zone's offset is a multiple of 15 minutes, so such a bucket
    never straddles a local midnight), the rest is float arithmetic."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._days: dict[int, tuple[float, float]] = {}

    def day(self, epoch: float) -> tuple[float, float]:
        bucket = int(epoch // 900)
        bounds = self._days.get(bucket)
        if bounds is None:
            if len(self._days) > 100_000:
                self._days.clear()
            local_day = datetime.fromtimestamp(epoch, UTC).astimezone(self.tz).date()
            bounds = (
                local_midnight(local_day, self.tz).timestamp(),
                local_midnight(local_day + DAY, self.tz).timestamp(),
            )
            self._days[bucket] = bounds
        return bounds

    def start(self, epoch: float, window_s: float) -> float:
        """Epoch seconds of the start of the window of ``window_s`` containing ``epoch``."""
        lo, _ = self.day(epoch)
        if window_s >= 86400:
            return lo
        return lo + ((epoch - lo) // window_s) * window_s


def _offset(local: datetime) -> str:
    """The UTC offset of an aware instant as ``+01:00`` (``+00:00`` for UTC)."""
    offset = local.utcoffset() or timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def local_text(ts: datetime, zone: tzinfo, *, seconds: bool = False) -> str:
    """An aware instant as people read it: in ``zone`` (the network's), with that zone's UTC
    offset then: ``2026-12-04 13:50Z`` in Europe/Copenhagen is ``2026-12-04 14:50 +01:00``.
    The one form of every time in alert texts, statements, mails and the dashboard."""
    local = ts.astimezone(zone)
    clock = f"{local:%H:%M:%S}" if seconds else f"{local:%H:%M}"
    return f"{local:%Y-%m-%d} {clock} {_offset(local)}"


def human_time(ts: str, zone: str | None = None) -> str:
    """An instant of a statement (RFC 3339 text) as :func:`local_text` shows it, in ``zone``
    (the document's instants are already in it when no zone is given):
    ``2026-12-04T14:50:12.068851+01:00`` → ``2026-12-04 14:50 +01:00``."""
    local = datetime.fromisoformat(ts)
    tz = ZoneInfo(zone) if zone else local.tzinfo
    return local_text(local, tz or UTC)
