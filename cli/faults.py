"""Faults injected into a simulation, and their text form.

Faults (``KIND:SUBJECT[:SIZE][@START][+DURATION]``, see ``parse_fault``) act from START
(default: the simulation start) for DURATION (default: to the end):

* ``leak`` (exchange): the receiver side loses SIZE of the flow on top of ``loss``.
* ``drift`` (meter): a bias growing linearly from 0 at START to SIZE at the end of DURATION
  (then the meter is recalibrated: bias 0) or, without DURATION, at the end of the simulation
  (30 days for an open-ended one, then it stays at SIZE).
* ``stuck`` (meter): a total register stops counting (a periodic delta meter sends 0), a rate
  repeats its last reading before START, a weighbridge repeats the first ticket of the fault;
  readings keep coming. Afterwards the meter counts on from where it stopped.
* ``gap`` (meter): no readings at all (the register keeps counting; a periodic delta meter's
  next reading includes what passed during the gap).
* ``reset`` (total meter, no size or duration): at START the register drops to a small value
  (0–10, a replaced meter) and counts on from there.
* ``spike`` (meter, no duration): the first reading at or after START is multiplied by SIZE
  (default 10), then the meter is back on track.

Flows and leaks act at the one-minute resolution of the model; gaps, stuck rates and spikes act
on reading timestamps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from core.network import (
    Network,
    ReadingType,
    parse_duration,
)
from core.windows import local_midnight

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------------- faults


class FaultKind(StrEnum):
    leak = "leak"
    drift = "drift"
    stuck = "stuck"
    gap = "gap"
    reset = "reset"
    spike = "spike"


SPIKE_DEFAULT = 10.0


@dataclass(frozen=True)
class Fault:
    """A fault injected into the simulation.

    ``subject`` is an exchange id for ``leak`` and a meter id for every other kind. ``size`` is a
    fraction for ``leak`` (0.05 = 5 % of the flow lost) and ``drift`` (the bias reached; may be
    negative), a factor for ``spike`` (default 10), and unused otherwise. ``start`` (aware)
    defaults to the simulation start, ``duration`` to the rest of the simulation.
    """

    kind: FaultKind
    subject: str
    size: float | None = None
    start: datetime | None = None
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", FaultKind(self.kind))
        except ValueError:
            raise ValueError(_unknown_kind(str(self.kind))) from None
        if self.start is not None and self.start.tzinfo is None:
            raise ValueError(f"fault {self.kind.value}:{self.subject}: start has no time zone")
        if self.duration is not None and self.duration <= timedelta(0):
            raise ValueError(f"fault {self.kind.value}:{self.subject}: duration must be positive")

    def __str__(self) -> str:
        text = f"{self.kind.value}:{self.subject}"
        if self.size is not None:
            text += f":{self.size * 100:g}%" if self.kind != FaultKind.spike else f":{self.size:g}"
        if self.start is not None:
            text += "@" + self.start.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if self.duration is not None:
            text += f"+{int(self.duration.total_seconds())}s"
        return text

    def bounds(self, sim_start: float, sim_end: float | None) -> tuple[float, float]:
        """[start, end) in epoch seconds; ``inf`` for an open end."""
        start = sim_start if self.start is None else self.start.timestamp()
        if self.duration is not None:
            return start, start + self.duration.total_seconds()
        return start, math.inf if sim_end is None else max(sim_end, start)


def _unknown_kind(kind: str) -> str:
    kinds = ", ".join(k.value for k in FaultKind)
    return f"unknown fault kind {kind!r} (use one of {kinds})"


_FAULT_RE = re.compile(
    r"^(?P<kind>[^:@+]*):(?P<subject>[^:@+]*)(?::(?P<size>[^@+]*))?"
    r"(?:@(?P<start>.+?))?(?:\+(?P<duration>\d+\s*[A-Za-z]+))?$"
)
_SIZE_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(%|x)?$")


def parse_time(text: str, tz: ZoneInfo | None = None) -> datetime:
    """An instant from ISO 8601 text, as an aware UTC datetime.

    ``2026-10-10T00:00Z`` and offsets as given; a bare date is midnight and a time without an
    offset is wall time, both in ``tz`` (the network's zone; UTC if None); ``now`` is now.
    """
    raw = text.strip()
    zone = tz or ZoneInfo("UTC")
    if raw.lower() == "now":
        return datetime.now(UTC)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            return local_midnight(date.fromisoformat(raw), zone)
        if raw[-1:] in "zZ":
            raw = raw[:-1] + "+00:00"
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"bad time {text!r} (use ISO 8601, e.g. 2026-10-10T00:00Z or 2026-10-10)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def _parse_size(kind: FaultKind, text: str) -> float:
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"{kind.value}: bad size {text!r} (use e.g. 5%, 0.05 or 10)")
    value = float(match.group(1))
    suffix = match.group(2)
    if suffix == "%":
        value /= 100.0
    elif suffix == "x" and kind != FaultKind.spike:
        raise ValueError(f"{kind.value}: bad size {text!r} (a factor 'x' is for spikes)")
    return value


def parse_fault(text: str, network: Network) -> Fault:
    """A fault from the command-line syntax ``KIND:SUBJECT[:SIZE][@START][+DURATION]``.

    Examples: ``leak:steam-asnaes-novo:5%@2026-10-10T00:00Z``, ``drift:novo-steam-in:3%``,
    ``stuck:novo-steam-in@2026-10-05T00:00Z+6h``, ``gap:novo-steam-in@2026-10-12T06:00Z+2h``,
    ``reset:novo-steam-in@2026-10-15T12:00Z``, ``spike:novo-steam-in:10@2026-10-20T08:00Z``.
    SIZE is a percentage (``5%``) or a fraction (``0.05``); for a spike a factor (``10``).
    START is ISO 8601 (a time without offset is in the network's zone); DURATION is
    ``90s``, ``15m``, ``6h`` or ``2d``. Raises ValueError saying what is wrong.
    """
    spec = text.strip()
    match = _FAULT_RE.match(spec)
    if not match:
        raise ValueError(f"bad fault {text!r} (use KIND:SUBJECT[:SIZE][@START][+DURATION])")
    kind_text = match.group("kind").strip().lower()
    try:
        kind = FaultKind(kind_text)
    except ValueError:
        raise ValueError(f"fault {text!r}: {_unknown_kind(kind_text)}") from None
    subject = match.group("subject").strip()
    try:
        size = None if match.group("size") is None else _parse_size(kind, match.group("size"))
        start = None
        if match.group("start") is not None:
            start = parse_time(match.group("start"), network.tz)
        duration = None
        if match.group("duration") is not None:
            duration = parse_duration(match.group("duration").replace(" ", ""))
        fault = Fault(kind, subject, size, start, duration)
        check_fault(fault, network)
    except ValueError as exc:
        raise ValueError(f"fault {text!r}: {exc}") from None
    return fault


def check_fault(fault: Fault, network: Network) -> None:
    """Raise ValueError if ``fault`` does not fit ``network`` (subject, size, duration)."""
    kind = fault.kind
    meters = {m.id: m for m in network.meters}
    exchanges = {e.id: e for e in network.exchanges}
    subject = fault.subject
    if not subject:
        raise ValueError(
            f"{kind.value}: no subject (an {'exchange' if kind == 'leak' else 'meter'})"
        )
    if kind == FaultKind.leak:
        if subject not in exchanges:
            if subject in meters:
                raise ValueError(f"leak applies to an exchange, '{subject}' is a meter")
            raise ValueError(f"unknown exchange '{subject}'")
        loss = exchanges[subject].loss
        if fault.size is None:
            raise ValueError("leak needs a size, e.g. leak:EXCHANGE:5%")
        if not 0 < fault.size < 1 - loss:
            raise ValueError(
                f"leak size {fault.size:g} must be a fraction between 0 and {1 - loss:g}"
                " (1 − loss); write e.g. 5% or 0.05"
            )
        return
    if subject not in meters:
        if subject in exchanges:
            raise ValueError(f"{kind.value} applies to a meter, '{subject}' is an exchange")
        raise ValueError(f"unknown meter '{subject}'")
    meter = meters[subject]
    if kind == FaultKind.drift:
        if fault.size is None:
            raise ValueError("drift needs a size, e.g. drift:METER:3%")
        if not -1 < fault.size < 1 or fault.size == 0:
            raise ValueError(f"drift size {fault.size:g} must be a non-zero fraction in (−1, 1)")
    elif kind == FaultKind.spike:
        if fault.size is not None and not (fault.size > 0 and math.isfinite(fault.size)):
            raise ValueError(f"spike factor {fault.size:g} must be positive")
        if fault.duration is not None:
            raise ValueError("a spike is one reading: it takes no duration")
    elif fault.size is not None:
        raise ValueError(f"{kind.value} takes no size")
    if kind == FaultKind.reset:
        if meter.reading != ReadingType.total:
            raise ValueError(
                f"reset needs a total meter, '{subject}' is a {meter.reading.value} meter"
            )
        if fault.duration is not None:
            raise ValueError("a reset is an instant: it takes no duration")
