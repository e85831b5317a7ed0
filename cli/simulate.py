"""Simulated meters (SPEC §9): realistic readings for a network, with injected faults.

The simulator feeds the demo, the tests and the benchmarks, so it is a pure, deterministic,
vectorised function of (network, time range, faults, seed); only ``publish`` talks to a broker.

The model
---------
* Time is cut into one-minute cells aligned to the epoch. Each exchange has a true flow per cell
  (canonical unit per hour): ``nominal`` (10 when unset) × a daily profile (in the network's
  time zone) × a seasonal profile × a slow random variation of a few per cent. The flow is
  constant within a cell, so every true quantity is an exact sum of cells and a cumulative
  quantity is exactly linear between cell edges.

  ==================================  ==============================  =====================
  exchange                            daily profile                   seasonal (Jan / Jul)
  ==================================  ==============================  =====================
  heat, a meter's medium has "steam"  ±8 %, peak mid-afternoon        ×1.15 / ×0.85
  heat, hot water / district heat     morning and evening peaks       ×1.35 / ×0.65
  other heat (gas ...), water         ±5 %, peak early afternoon      none
  material                            flat                            none
  ==================================  ==============================  =====================

* Provider-side (``sent``) meters measure the flow F, split among them by fixed fractions;
  receiver-side meters measure ``(1 − loss − leak) · F``, split likewise. A meter in several
  exchanges measures the sum. A balance's meters that are in no exchange are derived from the
  other side (``in = Σ out / (1 − loss)``, ``out = (1 − loss) · Σ in``); any meter left over
  measures a constant 10 per hour.
* Trucked exchanges (any meter of the exchange is a ``delta`` meter without ``interval``):
  trucks of 25–40 canonical units net leave on working days (Monday–Saturday, in the network's
  time zone) between 06:00 and 22:00, their number per day following the exchange's flow.
  The provider's weighbridge writes a ticket at departure, the receiver's one at arrival
  20–90 minutes later for the same truck (``mass · (1 − loss − leak)``); both are before 22:00.
  A continuous meter on a trucked exchange sees each truck as a 15-minute load.
* Meter error: for every window of the meter (its finest exchange/balance window, else 1 h)
  ``ε ~ N(0, uncertainty)`` holds for the whole window, so a window quantity is
  ``true · (1 + ε)`` and has relative 1σ = ``uncertainty`` (SPEC §5). ``uncertainty_abs`` adds
  ``N(0, uncertainty_abs)`` per window (continuous meters). Rate readings carry 0.3 % white
  noise on top.
* Readings: ``total`` meters send a register (meter unit, 3 decimals) every ``interval`` s at
  multiples of the interval; it starts at a random 10⁴–10⁶ plus what a meter of that size would
  have counted since 2020, so restarts of the simulator roughly continue the register.
  ``rate`` meters send the instantaneous rate; ``delta`` meters with an ``interval`` send the
  quantity since their previous reading; ticket meters send one value per truck,
  to about five significant digits (0.01 t, 1 kg).

Randomness is counter-based: every random number is a hash of (seed, what, when), so the value
of an instant does not depend on where the simulation started or how it was chunked; only the
register offsets depend on the start. ``true_flows`` evaluates the same functions, so it is
exactly the truth that the meters measure.

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

import argparse
import contextlib
import hashlib
import json
import math
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from core.network import (
    Exchange,
    Kind,
    Meter,
    Network,
    NetworkError,
    ReadingType,
    load_network,
    parse_duration,
)
from core.units import canonical_unit, conversion
from core.windows import local_midnight, windows_between

if TYPE_CHECKING:
    from core.settings import Settings

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_U64 = npt.NDArray[np.uint64]

Form = Literal["batch", "single", "senml"]
FORMS: tuple[Form, ...] = ("batch", "single", "senml")

CELL = 60.0  # seconds: the resolution of the flow model
_CELL_H = CELL / 3600.0
DEFAULT_NOMINAL = 10.0  # canonical unit per hour, when an exchange has no ``nominal``
DEFAULT_FLOW = 10.0  # per hour, for a meter in no exchange and no derivable balance
RATE_JITTER = 0.003  # relative white noise of an instantaneous rate reading
TRUCK_LOAD = (25.0, 40.0)  # net load of a truck, canonical unit
TRUCK_MEAN = sum(TRUCK_LOAD) / 2
TRANSIT_S = (20 * 60.0, 90 * 60.0)
WORK_HOURS = (6, 22)  # local time, Monday to Saturday
UNLOAD_S = 15 * 60.0  # a truck seen by a continuous meter: a 15-minute load
TICKET_SPACING_S = 60.0  # one truck per minute at most on a weighbridge
RESOLUTION = 3  # decimals of the meter's unit in readings
DRIFT_OPEN_RAMP = timedelta(days=30)
_REGISTER_ANCHOR = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
# Slow random variation: (knot spacing in seconds, relative σ) of linearly interpolated noise.
_VARIATION = ((6 * 3600.0, 0.025), (2 * 86400.0, 0.04))


# --------------------------------------------------------------------- counter-based random

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_SH30, _SH27, _SH31, _SH11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO53 = 1.0 / 9007199254740992.0


def _mix(x: _U64) -> _U64:
    """splitmix64's finaliser, on arrays (uint64 arithmetic wraps, as it should)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _SH30)) * _MUL1
    x = (x ^ (x >> _SH27)) * _MUL2
    out: _U64 = x ^ (x >> _SH31)
    return out


def _key(seed: int, *parts: str | int) -> int:
    """A stable 64-bit key for one random stream (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _uniform(key: int, counter: IntArray, stream: int = 0) -> FloatArray:
    """Uniform [0, 1) numbers, one per counter, a pure function of (key, counter, stream)."""
    c = np.ascontiguousarray(counter, dtype=np.int64).view(np.uint64)
    h = _mix(_mix(c ^ np.uint64(key)) ^ np.uint64(stream * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))
    out: FloatArray = (h >> _SH11).astype(np.float64) * _TWO53
    return out


def _normal(key: int, counter: IntArray) -> FloatArray:
    """Standard normal numbers (Box–Muller), one per counter."""
    u1 = 1.0 - _uniform(key, counter, 1)
    u2 = _uniform(key, counter, 2)
    out: FloatArray = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out


def _u(key: int) -> float:
    return float(_uniform(key, np.zeros(1, dtype=np.int64))[0])


# ------------------------------------------------------------------------------- profiles


def _circular(hour: FloatArray, centre: float) -> FloatArray:
    out: FloatArray = (hour - centre + 12.0) % 24.0 - 12.0
    return out


def _district_raw(hour: FloatArray) -> FloatArray:
    morning = np.exp(-0.5 * (_circular(hour, 7.5) / 1.5) ** 2)
    evening = np.exp(-0.5 * (_circular(hour, 18.5) / 2.0) ** 2)
    out: FloatArray = 0.8 + 0.35 * morning + 0.25 * evening
    return out


_DISTRICT_MEAN = float(np.mean(_district_raw(np.arange(0.0, 24.0, 1.0 / 60.0))))
_SEASON_AMPLITUDE = {"steam": 0.15, "district": 0.35, "process": 0.0, "flat": 0.0}


def _daily(profile: str, hour: FloatArray) -> FloatArray:
    """Mean-one daily shape of a flow, by local hour of day."""
    if profile == "steam":
        out: FloatArray = 1.0 + 0.08 * np.cos(2 * np.pi * (hour - 14.0) / 24.0)
    elif profile == "district":
        out = _district_raw(hour) / _DISTRICT_MEAN
    elif profile == "process":
        out = 1.0 + 0.05 * np.cos(2 * np.pi * (hour - 13.0) / 24.0)
    else:
        out = np.ones_like(hour)
    return out


def _seasonal(profile: str, local_days: FloatArray) -> FloatArray:
    """Mean-one yearly shape: highest in mid-January, lowest in mid-July."""
    amplitude = _SEASON_AMPLITUDE[profile]
    out: FloatArray = 1.0 + amplitude * np.cos(2 * np.pi * (local_days - 14.5) / 365.2425)
    return out


def _variation(keys: Sequence[int], t: FloatArray) -> FloatArray:
    """Slow random variation around 1: linearly interpolated noise knots, stateless."""
    out: FloatArray = np.ones_like(t)
    if t.size == 0:
        return out
    for key, (step, sigma) in zip(keys, _VARIATION, strict=True):
        pos = t / step
        knot = np.floor(pos).astype(np.int64)
        first = int(knot.min())
        knots = np.arange(first, int(knot.max()) + 2, dtype=np.int64)
        values = sigma * _normal(key, knots)
        i = knot - first
        out += values[i] + (values[i + 1] - values[i]) * (pos - knot)
    clipped: FloatArray = np.maximum(out, 0.2)
    return clipped


def _offset(tz: ZoneInfo, epoch: float) -> float:
    delta = datetime.fromtimestamp(epoch, tz).utcoffset()
    return 0.0 if delta is None else delta.total_seconds()


def _local_offsets(t: FloatArray, tz: ZoneInfo) -> FloatArray:
    """UTC offset in seconds at each instant (looked up once per hour spanned)."""
    if t.size == 0:
        return np.zeros(0)
    hours = np.floor(t / 3600.0).astype(np.int64)
    first = int(hours.min())
    table = np.array([_offset(tz, h * 3600.0) for h in range(first, int(hours.max()) + 1)])
    out: FloatArray = table[hours - first]
    return out


def _overlap(starts: FloatArray, lo: float, hi: float) -> FloatArray:
    """Seconds of each cell [start, start + CELL) inside [lo, hi)."""
    out: FloatArray = np.clip(np.minimum(starts + CELL, hi) - np.maximum(starts, lo), 0.0, CELL)
    return out


def _smear(times: FloatArray, qty: FloatArray, c0: float, n: int) -> FloatArray:
    """Flow per cell (per hour) of loads ``qty`` each spread over UNLOAD_S from ``times``."""
    out = np.zeros(n)
    if times.size == 0:
        return out
    span = int(UNLOAD_S // CELL) + 2
    base = np.floor((times - c0) / CELL).astype(np.int64)
    j = base[:, None] + np.arange(span, dtype=np.int64)[None, :]
    cell = c0 + CELL * j
    t0 = times[:, None]
    seconds = np.clip(np.minimum(cell + CELL, t0 + UNLOAD_S) - np.maximum(cell, t0), 0.0, None)
    part = qty[:, None] * seconds / UNLOAD_S
    ok = (j >= 0) & (j < n) & (part > 0)
    np.add.at(out, j[ok], part[ok])
    flow: FloatArray = out / _CELL_H
    return flow


def _periodic(interval: float, a: float, b: float) -> FloatArray:
    """Reading times in [a, b): the multiples of ``interval``."""
    k0 = math.ceil(a / interval)
    k1 = math.ceil(b / interval)
    out: FloatArray = interval * np.arange(k0, max(k0, k1), dtype=np.float64)
    return out


def _epoch(ts: datetime) -> float:
    if ts.tzinfo is None:
        raise ValueError(f"time {ts.isoformat()} has no time zone")
    return ts.timestamp()


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


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


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class MeterChunk:
    """The readings of one meter in the time chunk [start, end) (epoch seconds).

    ``ts`` are epoch seconds, ``value`` in the meter's own ``unit`` (canonical value divided by
    ``conversion(unit, kind, reading)``): registers for ``total``, rates for ``rate``,
    quantities since the previous reading for ``delta``.
    """

    meter_id: str
    partner_id: str
    unit: str
    reading: ReadingType
    start: float
    end: float
    ts: FloatArray
    value: FloatArray

    def __len__(self) -> int:
        return int(self.ts.size)


@dataclass(frozen=True, eq=False)
class ExchangeTruth:
    """True quantities of one exchange per window, in the canonical ``unit``.

    Windows are those of the exchange (or the override) overlapping the simulated range, cut to
    it: ``starts[0]`` may be later than the first window's start and ``ends[-1]`` earlier than
    the last one's end. ``sent`` is what left the provider, ``received`` what reached the
    receiver (after loss and leaks). For trucked exchanges a truck counts in the window of its
    ticket (departure for sent, arrival for received).
    """

    exchange_id: str
    unit: str
    starts: FloatArray
    ends: FloatArray
    sent: FloatArray
    received: FloatArray

    def windows(self) -> list[tuple[datetime, datetime]]:
        return [
            (_dt(s), _dt(e)) for s, e in zip(self.starts.tolist(), self.ends.tolist(), strict=True)
        ]

    def total(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[float, float]:
        """(sent, received) summed over the windows starting in [start, end)."""
        sel = np.ones(self.starts.size, dtype=bool)
        if start is not None:
            sel &= self.starts >= _epoch(start)
        if end is not None:
            sel &= self.starts < _epoch(end)
        return float(self.sent[sel].sum()), float(self.received[sel].sum())


# ---------------------------------------------------------------------------- the engine


@dataclass
class _Flow:
    """An exchange (or a stand-alone weighbridge) as the simulator sees it."""

    id: str
    exchange: Exchange | None
    nominal: float
    profile: str
    loss: float
    trucked: bool
    vary: bool
    sent: list[tuple[int, float]]
    received: list[tuple[int, float]]
    var_keys: tuple[int, int]
    truck_key: int
    leaks: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class _Trucks:
    depart: FloatArray
    arrive: FloatArray
    mass: FloatArray
    received_mass: FloatArray
    sent_meter: IntArray
    received_meter: IntArray

    @staticmethod
    def empty() -> _Trucks:
        z = np.zeros(0)
        zi = np.zeros(0, dtype=np.int64)
        return _Trucks(z, z, z, z, zi, zi)

    @staticmethod
    def concat(parts: list[_Trucks]) -> _Trucks:
        if not parts:
            return _Trucks.empty()
        return _Trucks(
            np.concatenate([p.depart for p in parts]),
            np.concatenate([p.arrive for p in parts]),
            np.concatenate([p.mass for p in parts]),
            np.concatenate([p.received_mass for p in parts]),
            np.concatenate([p.sent_meter for p in parts]),
            np.concatenate([p.received_meter for p in parts]),
        )


@dataclass
class _MeterModel:
    meter: Meter
    mode: str  # total | rate | delta (periodic) | ticket
    conv: float
    interval: float
    window: timedelta
    eps_key: int
    abs_key: int
    jitter_key: int
    r0: float
    drifts: list[tuple[float, float, float, float]] = field(default_factory=list)
    stuck: list[tuple[int, float, float]] = field(default_factory=list)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    resets: list[tuple[float, float]] = field(default_factory=list)
    spikes: list[tuple[int, float, float]] = field(default_factory=list)
    tickets: list[tuple[int, str, int]] = field(default_factory=list)


def _profile(exchange: Exchange, meters: list[Meter]) -> str:
    media = " ".join((m.medium or "").lower() for m in meters)
    if exchange.kind == Kind.heat:
        if "steam" in media:
            return "steam"
        if not media.strip() or any(w in media for w in ("hot water", "district", "heat")):
            return "district"
        return "process"
    if exchange.kind == Kind.water:
        return "process"
    return "flat"


class _Engine:
    """The simulation state: the network compiled to arrays, plus running registers."""

    def __init__(
        self,
        network: Network,
        start: float,
        end: float | None,
        faults: Sequence[Fault],
        seed: int,
    ) -> None:
        self.network = network
        self.tz = network.tz
        self.seed = seed
        self.start = start
        self.end = end
        for fault in faults:
            check_fault(fault, network)
        self.meters = list(network.meters)
        self.index = {m.id: i for i, m in enumerate(self.meters)}
        windows = network.meter_windows()
        self.models: list[_MeterModel] = []
        for m in self.meters:
            if m.reading == ReadingType.delta:
                mode = "delta" if m.interval is not None else "ticket"
            else:
                mode = m.reading.value
            self.models.append(
                _MeterModel(
                    meter=m,
                    mode=mode,
                    conv=conversion(m.unit, m.kind, m.reading),
                    interval=float(m.interval or 0.0),
                    window=windows.get(m.id, timedelta(hours=1)),
                    eps_key=_key(seed, "eps", m.id),
                    abs_key=_key(seed, "abs", m.id),
                    jitter_key=_key(seed, "jitter", m.id),
                    r0=10 ** (4 + 2 * _u(_key(seed, "register", m.id))),
                )
            )
        self.flows: list[_Flow] = []
        in_exchange: set[int] = set()
        for ex in network.exchanges:
            ex_meters = [self.meters[self.index[mid]] for mid in (*ex.sent, *ex.received)]
            trucked = any(self.models[self.index[m.id]].mode == "ticket" for m in ex_meters)
            flow = _Flow(
                id=ex.id,
                exchange=ex,
                nominal=ex.nominal if ex.nominal is not None else DEFAULT_NOMINAL,
                profile=_profile(ex, ex_meters),
                loss=ex.loss,
                trucked=trucked,
                vary=True,
                sent=self._fractions(ex.sent, f"{ex.id}/sent"),
                received=self._fractions(ex.received, f"{ex.id}/received"),
                var_keys=(_key(seed, "var", ex.id, 0), _key(seed, "var", ex.id, 1)),
                truck_key=_key(seed, "trucks", ex.id),
            )
            self.flows.append(flow)
            in_exchange.update(self.index[mid] for mid in (*ex.sent, *ex.received))
        for i, model in enumerate(self.models):
            if model.mode == "ticket" and i not in in_exchange:
                mid = model.meter.id
                self.flows.append(
                    _Flow(
                        id=f"~{mid}",
                        exchange=None,
                        nominal=DEFAULT_FLOW,
                        profile="flat",
                        loss=0.0,
                        trucked=True,
                        vary=False,
                        sent=[(i, 1.0)],
                        received=[],
                        var_keys=(0, 0),
                        truck_key=_key(seed, "trucks", f"~{mid}"),
                    )
                )
                in_exchange.add(i)
        for fi, flow in enumerate(self.flows):
            if flow.trucked:
                for side, roles in (("sent", flow.sent), ("received", flow.received)):
                    for k, (mi, _) in enumerate(roles):
                        if self.models[mi].mode == "ticket":
                            self.models[mi].tickets.append((fi, side, k))
        self._plan(in_exchange)
        self._apply_faults(faults)
        # Running state: cumulative measured quantity since the start (canonical), register
        # offsets (meter unit), the cumulative at a periodic delta meter's last reading.
        static = self._static_rates()
        elapsed_h = max(0.0, start - _REGISTER_ANCHOR) / 3600.0
        self.carry = np.zeros(len(self.meters))
        self.register_offset = np.array(
            [m.r0 + static[i] * elapsed_h / m.conv for i, m in enumerate(self.models)]
        )
        self.last_cum = np.zeros(len(self.meters))
        self.spiked: set[int] = set()
        self.stuck_values: dict[int, float] = {}
        self._truck_cache: dict[tuple[int, int], _Trucks] = {}

    # -- compile ------------------------------------------------------------------------

    def _fractions(self, ids: Sequence[str], context: str) -> list[tuple[int, float]]:
        weights = [0.6 + 0.8 * _u(_key(self.seed, "split", context, mid)) for mid in ids]
        total = sum(weights)
        return [(self.index[mid], w / total) for mid, w in zip(ids, weights, strict=True)]

    def _plan(self, known: set[int]) -> None:
        """Order in which balances derive the meters that no exchange drives.

        A balance with one side fully known fills the other side's unknown meters. When no
        balance can make progress, the unknown ``out`` meters of a balance that has some are
        given the default flow, and derivation goes on from there (a header with an unmetered
        consumer branch).
        """
        known = set(known)
        self.plan: list[tuple[str, float, list[int], list[int], list[tuple[int, float]]]] = []
        while True:
            progress = False
            for bal in self.network.balances:
                ins = [self.index[m] for m in bal.in_]
                outs = [self.index[m] for m in bal.out]
                unknown_in = [i for i in ins if i not in known]
                unknown_out = [i for i in outs if i not in known]
                if unknown_out and not unknown_in:
                    fill, side = unknown_out, "out"
                    others = [i for i in outs if i in known]
                    source = ins
                elif unknown_in and not unknown_out:
                    fill, side = unknown_in, "in"
                    others = [i for i in ins if i in known]
                    source = outs
                else:
                    continue
                ids = [self.meters[i].id for i in fill]
                self.plan.append(
                    (side, bal.loss, source, others, self._fractions(ids, f"{bal.id}/{side}"))
                )
                known.update(fill)
                progress = True
            if progress:
                continue
            stuck = [
                i
                for bal in self.network.balances
                for m in bal.out
                if (i := self.index[m]) not in known
            ]
            if not stuck:
                break
            self.plan.append(("default", 0.0, [], [], [(i, 1.0) for i in stuck]))
            known.update(stuck)
        self.defaults = [i for i in range(len(self.meters)) if i not in known]

    def _derive(self, flows: FloatArray) -> None:
        """Fill balance-derived and default meters in ``flows`` [meter, cell], in place."""
        for side, loss, source, others, fill in self.plan:
            if side == "default":
                for mi, _ in fill:
                    flows[mi] = DEFAULT_FLOW
                continue
            if side == "out":
                total = (1 - loss) * flows[source].sum(axis=0) - flows[others].sum(axis=0)
            else:
                total = flows[source].sum(axis=0) / (1 - loss) - flows[others].sum(axis=0)
            total = np.maximum(total, 0.0)
            for mi, frac in fill:
                flows[mi] = frac * total
        for mi in self.defaults:
            flows[mi] = DEFAULT_FLOW

    def _static_rates(self) -> FloatArray:
        """Long-run mean true flow of each meter (nominal sizes, no profiles)."""
        flows = np.zeros((len(self.meters), 1))
        for flow in self.flows:
            for mi, frac in flow.sent:
                flows[mi] += frac * flow.nominal
            for mi, frac in flow.received:
                flows[mi] += frac * flow.nominal * (1 - flow.loss)
        self._derive(flows)
        out: FloatArray = flows[:, 0]
        return out

    def _apply_faults(self, faults: Sequence[Fault]) -> None:
        for fid, fault in enumerate(faults):
            lo, hi = fault.bounds(self.start, self.end)
            if fault.kind == FaultKind.leak:
                for flow in self.flows:
                    if flow.id == fault.subject:
                        flow.leaks.append((lo, hi, float(fault.size or 0.0)))
                continue
            model = self.models[self.index[fault.subject]]
            if fault.kind == FaultKind.drift:
                if fault.duration is not None or self.end is not None:
                    ramp_end, until = hi, hi
                else:
                    ramp_end, until = lo + DRIFT_OPEN_RAMP.total_seconds(), math.inf
                model.drifts.append((lo, ramp_end, until, float(fault.size or 0.0)))
            elif fault.kind == FaultKind.stuck:
                model.stuck.append((fid, lo, hi))
            elif fault.kind == FaultKind.gap:
                model.gaps.append((lo, hi))
            elif fault.kind == FaultKind.reset:
                small = 10.0 * _u(_key(self.seed, "reset", fid, fault.subject))
                model.resets.append((lo, round(small, RESOLUTION)))
                model.resets.sort()
            else:
                factor = SPIKE_DEFAULT if fault.size is None else fault.size
                model.spikes.append((fid, lo, factor))

    # -- true flows ---------------------------------------------------------------------

    def _leak_cells(self, flow: _Flow, starts: FloatArray) -> FloatArray:
        out = np.zeros(starts.size)
        for lo, hi, size in flow.leaks:
            out += size * _overlap(starts, lo, hi) / CELL
        return out

    def _leak_at(self, flow: _Flow, t: FloatArray) -> FloatArray:
        out = np.zeros(t.size)
        for lo, hi, size in flow.leaks:
            out += np.where((t >= lo) & (t < hi), size, 0.0)
        return out

    def exchange_flows(self, c0: float, n: int) -> tuple[FloatArray, FloatArray]:
        """True sent and received flow per (flow, cell) for the pipe exchanges (per hour)."""
        starts = c0 + CELL * np.arange(n, dtype=np.float64)
        mids = starts + CELL / 2
        local = mids + _local_offsets(mids, self.tz)
        hour = (local % 86400.0) / 3600.0
        days = local / 86400.0
        shapes: dict[str, FloatArray] = {}
        sent = np.zeros((len(self.flows), n))
        received = np.zeros((len(self.flows), n))
        for fi, flow in enumerate(self.flows):
            if flow.trucked:
                continue
            shape = shapes.get(flow.profile)
            if shape is None:
                shape = _daily(flow.profile, hour) * _seasonal(flow.profile, days)
                shapes[flow.profile] = shape
            f = flow.nominal * shape
            if flow.vary:
                f = f * _variation(flow.var_keys, mids)
            sent[fi] = f
            kept = np.maximum(1.0 - flow.loss - self._leak_cells(flow, starts), 0.0)
            received[fi] = f * kept
        return sent, received

    def day_trucks(self, fi: int, day: date) -> _Trucks:
        """The trucks of one trucked flow on one local day (cached, a pure function)."""
        cache_key = (fi, day.toordinal())
        cached = self._truck_cache.get(cache_key)
        if cached is not None:
            return cached
        flow = self.flows[fi]
        trucks = _Trucks.empty() if day.weekday() == 6 else self._make_trucks(flow, day)
        if len(self._truck_cache) > 512:
            self._truck_cache.clear()
        self._truck_cache[cache_key] = trucks
        return trucks

    def _make_trucks(self, flow: _Flow, day: date) -> _Trucks:
        rng = np.random.default_rng([flow.truck_key, day.toordinal()])
        open_t = datetime.combine(day, dtime(WORK_HOURS[0]), self.tz).timestamp()
        close_t = datetime.combine(day, dtime(WORK_HOURS[1]), self.tz).timestamp()
        noon = np.array([datetime.combine(day, dtime(12), self.tz).timestamp()])
        local_days = (noon + _local_offsets(noon, self.tz)) / 86400.0
        level = flow.nominal * 24.0 * 7.0 / 6.0 * float(_seasonal(flow.profile, local_days)[0])
        if flow.vary:
            level *= float(_variation(flow.var_keys, noon)[0])
        n = int(rng.poisson(level / TRUCK_MEAN))
        mass = rng.uniform(*TRUCK_LOAD, size=n)
        transit = rng.uniform(*TRANSIT_S, size=n)
        depart = open_t + rng.uniform(0.0, 1.0, size=n) * (close_t - open_t - transit)
        sent_meter = self._choose(rng, flow.sent, n)
        received_meter = self._choose(rng, flow.received, n)
        order = np.argsort(depart, kind="stable")
        mass, transit, depart = mass[order], transit[order], depart[order]
        sent_meter, received_meter = sent_meter[order], received_meter[order]
        depart = _space(np.round(depart), sent_meter)
        arrive = _space(np.round(depart + transit), received_meter)
        kept = np.maximum(1.0 - flow.loss - self._leak_at(flow, arrive), 0.0)
        return _Trucks(depart, arrive, mass, mass * kept, sent_meter, received_meter)

    @staticmethod
    def _choose(rng: np.random.Generator, roles: list[tuple[int, float]], n: int) -> IntArray:
        if len(roles) <= 1:
            return np.zeros(n, dtype=np.int64)
        p = np.array([frac for _, frac in roles])
        out: IntArray = rng.choice(len(roles), size=n, p=p / p.sum()).astype(np.int64)
        return out

    def trucks_between(self, fi: int, lo: float, hi: float) -> _Trucks:
        """All trucks of the local days that can have a ticket or a load in [lo, hi)."""
        first = _dt(lo - 3 * 3600.0).astimezone(self.tz).date()
        last = _dt(hi).astimezone(self.tz).date()
        days = [first + timedelta(days=k) for k in range((last - first).days + 1)]
        return _Trucks.concat([self.day_trucks(fi, d) for d in days])

    def meter_flows(self, c0: float, n: int) -> FloatArray:
        """True flow per (meter, cell), canonical unit per hour."""
        sent, received = self.exchange_flows(c0, n)
        flows = np.zeros((len(self.meters), n))
        for fi, flow in enumerate(self.flows):
            if flow.trucked:
                trucks = self.trucks_between(fi, c0 - UNLOAD_S - CELL, c0 + n * CELL)
                for k, (mi, _) in enumerate(flow.sent):
                    sel = trucks.sent_meter == k
                    flows[mi] += _smear(trucks.depart[sel], trucks.mass[sel], c0, n)
                for k, (mi, _) in enumerate(flow.received):
                    sel = trucks.received_meter == k
                    flows[mi] += _smear(trucks.arrive[sel], trucks.received_mass[sel], c0, n)
            else:
                for mi, frac in flow.sent:
                    flows[mi] += frac * sent[fi]
                for mi, frac in flow.received:
                    flows[mi] += frac * received[fi]
        self._derive(flows)
        return flows

    # -- measurement --------------------------------------------------------------------

    def windows(self, window: timedelta, lo: float, hi: float) -> tuple[IntArray, FloatArray]:
        """Starts (int epoch s) and lengths (h) of the meter windows overlapping [lo, hi)."""
        bounds = windows_between(_dt(lo), _dt(max(hi, lo + 1e-3)), window, self.tz)
        starts = np.array([round(s.timestamp()) for s, _ in bounds], dtype=np.int64)
        hours = np.array([(e - s).total_seconds() / 3600.0 for s, e in bounds])
        return starts, hours

    def bias(self, model: _MeterModel, t: FloatArray) -> FloatArray:
        out = np.zeros(t.size)
        for lo, ramp_end, until, size in model.drifts:
            ramp = max(ramp_end - lo, 1.0)
            frac = np.clip((t - lo) / ramp, 0.0, 1.0)
            out += np.where((t >= lo) & (t < until), size * frac, 0.0)
        return out

    def measured(self, c0: float, n: int, flows: FloatArray) -> FloatArray:
        """What each meter measures per cell: truth × (1 + ε_window) × (1 + drift) + abs."""
        starts = c0 + CELL * np.arange(n, dtype=np.float64)
        mids = starts + CELL / 2
        out = np.empty_like(flows)
        cache: dict[float, tuple[IntArray, FloatArray, IntArray]] = {}
        for mi, model in enumerate(self.models):
            w = model.window.total_seconds()
            entry = cache.get(w)
            if entry is None:
                ws, hours = self.windows(model.window, c0, c0 + n * CELL)
                idx = np.searchsorted(ws, starts, side="right").astype(np.int64) - 1
                entry = (ws, hours, np.maximum(idx, 0))
                cache[w] = entry
            ws, hours, idx = entry
            meter = model.meter
            row = flows[mi] * (1.0 + meter.uncertainty * _normal(model.eps_key, ws)[idx])
            if model.drifts:
                row = row * (1.0 + self.bias(model, mids))
            if meter.uncertainty_abs:
                row = row + (meter.uncertainty_abs * _normal(model.abs_key, ws) / hours)[idx]
            out[mi] = np.maximum(row, 0.0)
        return out

    def running(self, model: _MeterModel, c0: float, n: int) -> FloatArray:
        """1 where the meter counts, 0 where it is stuck (fraction of the cell)."""
        starts = c0 + CELL * np.arange(n, dtype=np.float64)
        out = np.ones(n)
        for _, lo, hi in model.stuck:
            out -= _overlap(starts, lo, hi) / CELL
        clipped: FloatArray = np.maximum(out, 0.0)
        return clipped

    def rate_value(self, mi: int, t: float) -> float:
        """The reading a rate meter sends at ``t`` (stateless), before rounding."""
        c = math.floor(t / CELL) * CELL
        measured = self.measured(c, 1, self.meter_flows(c, 1))
        model = self.models[mi]
        jitter = RATE_JITTER * _normal(model.jitter_key, np.array([round(t * 1000)]))[0]
        return float(measured[mi, 0] * (1.0 + jitter) / model.conv)

    # -- readings -----------------------------------------------------------------------

    def chunk(self, a: float, b: float) -> list[MeterChunk]:
        """Every meter's readings in [a, b); chunks must be asked for in time order."""
        c0 = math.floor(a / CELL) * CELL
        n = max(1, math.ceil((b - c0) / CELL))
        flows = self.meter_flows(c0, n)
        measured = self.measured(c0, n, flows)
        nodes = c0 + CELL * np.arange(n + 1, dtype=np.float64)
        out: list[MeterChunk] = []
        for mi, model in enumerate(self.models):
            if model.mode == "ticket":
                ts, values = self._tickets(mi, model, a, b)
            elif model.mode == "rate":
                ts, values = self._rates(mi, model, a, b, c0, measured[mi])
            else:
                row = measured[mi]
                if model.stuck:
                    row = row * self.running(model, c0, n)
                cum = np.concatenate(([0.0], np.cumsum(row * _CELL_H)))
                base = self.carry[mi] - float(np.interp(a, nodes, cum))

                def cumulative(
                    t: FloatArray, cum: FloatArray = cum, base: float = base
                ) -> FloatArray:
                    out_: FloatArray = base + np.interp(t, nodes, cum)
                    return out_

                if model.mode == "total":
                    ts, values = self._registers(mi, model, a, b, cumulative)
                else:
                    ts, values = self._deltas(mi, model, a, b, cumulative)
                self.carry[mi] = float(cumulative(np.array([b]))[0])
            m = model.meter
            out.append(MeterChunk(m.id, m.partner, m.unit, m.reading, a, b, ts, values))
        return out

    def _gap_mask(self, model: _MeterModel, ts: FloatArray) -> BoolArray:
        keep = np.ones(ts.size, dtype=bool)
        for lo, hi in model.gaps:
            keep &= (ts < lo) | (ts >= hi)
        return keep

    def _spikes(self, model: _MeterModel, ts: FloatArray, values: FloatArray) -> None:
        for fid, lo, factor in model.spikes:
            if fid in self.spiked:
                continue
            hit = np.flatnonzero(ts >= lo)
            if hit.size:
                values[hit[0]] = round(float(values[hit[0]]) * factor, RESOLUTION)
                self.spiked.add(fid)

    def _registers(
        self,
        mi: int,
        model: _MeterModel,
        a: float,
        b: float,
        cumulative: Callable[[FloatArray], FloatArray],
    ) -> tuple[FloatArray, FloatArray]:
        ts = _periodic(model.interval, a, b)
        counted = cumulative(ts)
        values = self.register_offset[mi] + counted / model.conv
        for when, small in model.resets:
            if a <= when < b:
                at = float(cumulative(np.array([when]))[0])
                self.register_offset[mi] = small - at / model.conv
                after = ts >= when
                values[after] = self.register_offset[mi] + counted[after] / model.conv
        values = np.round(values, RESOLUTION)
        keep = self._gap_mask(model, ts)
        ts, values = ts[keep], values[keep]
        self._spikes(model, ts, values)
        return ts, values

    def _deltas(
        self,
        mi: int,
        model: _MeterModel,
        a: float,
        b: float,
        cumulative: Callable[[FloatArray], FloatArray],
    ) -> tuple[FloatArray, FloatArray]:
        ts = _periodic(model.interval, a, b)
        ts = ts[(ts > self.start) & self._gap_mask(model, ts)]
        counted = cumulative(ts)
        previous = np.concatenate(([self.last_cum[mi]], counted[:-1]))
        values = np.round((counted - previous) / model.conv, RESOLUTION)
        if ts.size:
            self.last_cum[mi] = counted[-1]
        self._spikes(model, ts, values)
        return ts, values

    def _rates(
        self, mi: int, model: _MeterModel, a: float, b: float, c0: float, row: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        ts = _periodic(model.interval, a, b)
        idx = np.minimum(((ts - c0) // CELL).astype(np.int64), row.size - 1)
        jitter = RATE_JITTER * _normal(model.jitter_key, np.round(ts * 1000).astype(np.int64))
        values = row[idx] * (1.0 + jitter) / model.conv
        for _, lo, hi in model.stuck:
            frozen = (ts >= lo) & (ts < hi)
            if frozen.any():
                last = math.floor(lo / model.interval) * model.interval
                values[frozen] = self.rate_value(mi, last)
        values = np.round(values, RESOLUTION)
        keep = self._gap_mask(model, ts)
        ts, values = ts[keep], values[keep]
        self._spikes(model, ts, values)
        return ts, values

    def _tickets(
        self, mi: int, model: _MeterModel, a: float, b: float
    ) -> tuple[FloatArray, FloatArray]:
        times: list[FloatArray] = []
        qty: list[FloatArray] = []
        for fi, side, k in model.tickets:
            trucks = self.trucks_between(fi, a, b)
            if side == "sent":
                t, q, who = trucks.depart, trucks.mass, trucks.sent_meter
            else:
                t, q, who = trucks.arrive, trucks.received_mass, trucks.received_meter
            sel = (who == k) & (t >= a) & (t < b)
            times.append(t[sel])
            qty.append(q[sel])
        ts = np.concatenate(times) if times else np.zeros(0)
        q_all = np.concatenate(qty) if qty else np.zeros(0)
        order = np.argsort(ts, kind="stable")
        ts, q_all = ts[order], q_all[order]
        if ts.size:
            ws, _ = self.windows(model.window, a, b)
            idx = np.maximum(np.searchsorted(ws, ts, side="right").astype(np.int64) - 1, 0)
            eps = model.meter.uncertainty * _normal(model.eps_key, ws)[idx]
            q_all = q_all * (1.0 + eps) * (1.0 + self.bias(model, ts))
        # A weighbridge prints about five significant digits: 0.01 t, 1 kg.
        decimals = max(0, 3 - math.floor(math.log10(TRUCK_MEAN / model.conv)))
        values = np.round(q_all / model.conv, decimals)
        for fid, lo, hi in model.stuck:
            frozen = np.flatnonzero((ts >= lo) & (ts < hi))
            if frozen.size:
                value = self.stuck_values.setdefault(fid, float(values[frozen[0]]))
                values[frozen] = value
        keep = self._gap_mask(model, ts)
        ts, values = ts[keep], values[keep]
        self._spikes(model, ts, values)
        return ts, values


def _space(times: FloatArray, who: IntArray) -> FloatArray:
    """Push apart tickets of the same weighbridge to at least TICKET_SPACING_S."""
    out = times.copy()
    for k in np.unique(who):
        sel = np.flatnonzero(who == k)
        order = sel[np.argsort(times[sel], kind="stable")]
        t = times[order]
        steps = TICKET_SPACING_S * np.arange(t.size)
        out[order] = steps + np.maximum.accumulate(t - steps)
    return out


# ---------------------------------------------------------------------------- public API


def _check_range(start: datetime, end: datetime | None) -> tuple[float, float | None]:
    a = _epoch(start)
    b = None if end is None else _epoch(end)
    if b is not None and b <= a:
        raise ValueError(f"end {end} is not after start {start}")
    return a, b


def simulate(
    network: Network,
    start: datetime,
    end: datetime | None,
    *,
    faults: Sequence[Fault] = (),
    seed: int = 0,
    chunk: timedelta = timedelta(days=1),
) -> Iterator[MeterChunk]:
    """Readings of every meter of ``network`` in [start, end), chunk by chunk.

    Yields one ``MeterChunk`` per meter (in network order, possibly empty) for [start,
    start + chunk), then for the next chunk, and so on: memory stays bounded for long backfills,
    and with ``end=None`` the generator never ends (live mode). The same (network, start,
    faults, seed) gives the same readings; the readings of an instant do not depend on
    ``chunk`` (up to float rounding of the registers' running sums).
    """
    a, b = _check_range(start, end)
    step = chunk.total_seconds()
    if step <= 0:
        raise ValueError("chunk must be positive")
    engine = _Engine(network, a, b, faults, seed)
    t = a
    while b is None or t < b:
        u = t + step if b is None else min(t + step, b)
        yield from engine.chunk(t, u)
        t = u


def true_flows(
    network: Network,
    start: datetime,
    end: datetime,
    *,
    faults: Sequence[Fault] = (),
    seed: int = 0,
    window: timedelta | None = None,
    chunk: timedelta = timedelta(days=7),
) -> dict[str, ExchangeTruth]:
    """The ground truth of ``simulate`` with the same arguments, per exchange and window.

    For each exchange, the true quantity sent and received (canonical unit) in each of its
    windows (``window`` overrides every exchange's own window), cut in the network's zone by
    ``core.windows`` and clipped to [start, end). Independent of meter errors and meter faults;
    leaks count. The meters measure exactly this truth × (1 + error).
    """
    a, b = _check_range(start, end)
    assert b is not None
    engine = _Engine(network, a, b, faults, seed)
    tz = network.tz
    edges: dict[int, FloatArray] = {}
    result: dict[str, ExchangeTruth] = {}
    for fi, flow in enumerate(engine.flows):
        ex = flow.exchange
        if ex is None:
            continue
        bounds = windows_between(start, end, window or ex.window, tz)
        starts = np.array([max(s.timestamp(), a) for s, _ in bounds])
        ends = np.array([min(e.timestamp(), b) for _, e in bounds])
        edges[fi] = np.concatenate((starts, ends[-1:]))
    sent_cum = {fi: np.zeros(e.size) for fi, e in edges.items()}
    recv_cum = {fi: np.zeros(e.size) for fi, e in edges.items()}
    pipes = [fi for fi in edges if not engine.flows[fi].trucked]
    carry_s = np.zeros(len(engine.flows))
    carry_r = np.zeros(len(engine.flows))
    step = chunk.total_seconds()
    t = a
    while pipes and t < b:
        u = min(t + step, b)
        c0 = math.floor(t / CELL) * CELL
        n = max(1, math.ceil((u - c0) / CELL))
        nodes = c0 + CELL * np.arange(n + 1, dtype=np.float64)
        sent, received = engine.exchange_flows(c0, n)
        for fi in pipes:
            e = edges[fi]
            sel = (e >= t) & ((e < u) | ((u >= b) & (e <= u)))
            for rows, carry, cum_out in ((sent, carry_s, sent_cum), (received, carry_r, recv_cum)):
                cum = np.concatenate(([0.0], np.cumsum(rows[fi] * _CELL_H)))
                at_t = float(np.interp(t, nodes, cum))
                cum_out[fi][sel] = carry[fi] + np.interp(e[sel], nodes, cum) - at_t
                carry[fi] += float(np.interp(u, nodes, cum)) - at_t
        t = u
    for fi, e in edges.items():
        flow = engine.flows[fi]
        assert flow.exchange is not None
        starts, ends = e[:-1], e[1:]
        if flow.trucked:
            trucks = engine.trucks_between(fi, a, b)
            sent_q = _bin(starts, a, b, trucks.depart, trucks.mass)
            recv_q = _bin(starts, a, b, trucks.arrive, trucks.received_mass)
        else:
            sent_q = np.diff(sent_cum[fi])
            recv_q = np.diff(recv_cum[fi])
        unit = canonical_unit(flow.exchange.kind, ReadingType.total)
        result[flow.id] = ExchangeTruth(flow.id, unit, starts, ends, sent_q, recv_q)
    return result


def _bin(starts: FloatArray, a: float, b: float, t: FloatArray, q: FloatArray) -> FloatArray:
    sel = (t >= a) & (t < b)
    idx = np.searchsorted(starts, t[sel], side="right") - 1
    out: FloatArray = np.bincount(idx, weights=q[sel], minlength=starts.size).astype(np.float64)
    return out


def expected_readings(network: Network, start: datetime, end: datetime) -> int:
    """About how many readings ``simulate`` gives for [start, end) (for progress bars)."""
    seconds = _epoch(end) - _epoch(start)
    total = 0.0
    for m in network.meters:
        if m.interval is not None:
            total += seconds / m.interval
    for ex in network.exchanges:
        tickets = [
            mid
            for mid in (*ex.sent, *ex.received)
            if network.meter(mid).reading == ReadingType.delta
            and network.meter(mid).interval is None
        ]
        if tickets:
            nominal = ex.nominal if ex.nominal is not None else DEFAULT_NOMINAL
            sides = sum(1 for side in (ex.sent, ex.received) if any(mid in tickets for mid in side))
            total += sides * nominal * seconds / 3600.0 / TRUCK_MEAN
    return int(total)


# ---------------------------------------------------------------------------- publishing


def format_ts(ts: FloatArray) -> list[str]:
    """RFC 3339 UTC with ``Z``; milliseconds only where a time is not a whole second."""
    ms = np.round(np.asarray(ts, dtype=np.float64) * 1000.0).astype(np.int64)
    whole = np.datetime_as_string((ms // 1000).astype("datetime64[s]"), unit="s", timezone="UTC")
    if not (ms % 1000).any():
        return whole.tolist()  # type: ignore[no-any-return]
    fine = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")
    mixed = np.where(ms % 1000 == 0, whole, fine)
    return mixed.tolist()  # type: ignore[no-any-return]


def topic_for(partner: str, meter: str) -> str:
    return f"symbiont/readings/{partner}/{meter}"


def encode(
    meter_id: str,
    unit: str,
    stamps: Sequence[str],
    ts: FloatArray,
    values: Sequence[float],
    form: Form,
) -> bytes:
    """One message of readings of one meter in ``form`` (SPEC §3).

    ``batch``: a JSON array of ``{"ts", "value", "unit"}`` (a single reading is sent as the bare
    object); ``single``: one object (exactly one reading); ``senml``: an RFC 8428 pack whose
    first record holds ``bn`` = meter id, every record ``t`` (epoch seconds), ``v`` and ``u``.
    """
    u = json.dumps(unit)
    if form == "senml":
        times = np.round(np.asarray(ts) * 1000.0) / 1000.0
        records = [
            f'{{"t":{_num(t)},"v":{v!r},"u":{u}}}'
            for t, v in zip(times.tolist(), values, strict=True)
        ]
        if records:
            records[0] = f'{{"bn":{json.dumps(meter_id)},' + records[0][1:]
        return ("[" + ",".join(records) + "]").encode()
    items = [
        f'{{"ts":"{s}","value":{v!r},"unit":{u}}}' for s, v in zip(stamps, values, strict=True)
    ]
    if form == "single" or len(items) == 1:
        if len(items) != 1:
            raise ValueError("the single form holds exactly one reading")
        return items[0].encode()
    return ("[" + ",".join(items) + "]").encode()


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def payloads(
    chunk: MeterChunk, form: Form = "batch", batch_size: int = 1000
) -> Iterator[tuple[str, bytes, int]]:
    """(topic, payload, number of readings) for every message that carries ``chunk``."""
    if not 1 <= batch_size <= 10000:
        raise ValueError("batch_size must be between 1 and 10000")
    if not np.isfinite(chunk.value).all():
        raise ValueError(f"meter {chunk.meter_id}: a simulated value is not finite")
    topic = topic_for(chunk.partner_id, chunk.meter_id)
    size = 1 if form == "single" else batch_size
    stamps = format_ts(chunk.ts)
    values: list[float] = chunk.value.tolist()
    for i in range(0, len(values), size):
        j = i + size
        yield (
            topic,
            encode(chunk.meter_id, chunk.unit, stamps[i:j], chunk.ts[i:j], values[i:j], form),
            len(values[i:j]),
        )


@dataclass
class PublishResult:
    """What ``publish`` did: messages and readings handed to the broker and acknowledged."""

    messages: int = 0
    readings: int = 0
    acked: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """(host, port, username, password, tls) from ``mqtt://user:pass@host:port`` or mqtts."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r}: use mqtt:// or mqtts://")
    tls = scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} has no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"MQTT URL {url!r} has a bad port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, tls


class MqttPublisher:
    """A paho-mqtt 2.x publisher that counts PUBACKs and bounds what is unacknowledged.

    The network loop runs in the caller's thread (``pump``), not in paho's background thread:
    a publisher thread and a loop thread handing locks to each other under the GIL manage a
    fraction of the message rate. ``send`` blocks while ``window`` messages wait for their
    PUBACK, so memory stays bounded; ``drain`` waits for every PUBACK (QoS 1) or send (QoS 0);
    ``wait`` sleeps while keeping the connection alive. At most ``inflight`` messages are in
    flight, and never more unacknowledged than the broker's CONNACK Receive Maximum allows.
    A lost connection is re-established; paho re-sends the unacknowledged messages.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        qos: int = 1,
        inflight: int = 1000,
        window: int = 5000,
        connect_timeout: float = 10.0,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        host, port, user, password, tls = parse_mqtt_url(url)
        self.host, self.port = host, port
        self.qos = qos
        self.inflight = inflight
        self._window = self.window = max(window, inflight)
        self.pending = 0
        self.acked = 0
        self.failed = 0
        self.connected = False
        self.error: str | None = None
        self._since_pump = 0
        self._mqtt = mqtt
        # Messages in flight, and those the broker answered "no matching subscribers"
        # (MQTT 5 reason 0x10: ingest's subscription is not there yet, e.g. just after a
        # broker restart): a careful device sends those again rather than dropping them.
        self._in_flight: dict[int, tuple[str, bytes]] = {}
        self._unheard: list[tuple[str, bytes]] = []
        self._retry_at = 0.0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"symbiont-simulate-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set()
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        try:
            self.client.connect(host, port, keepalive=60)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
        deadline = time.monotonic() + connect_timeout
        while not self.connected and self.error is None and time.monotonic() < deadline:
            self.client.loop(timeout=0.1)
        if not self.connected:
            self.client.disconnect()
            why = self.error or f"no answer within {connect_timeout:g}s"
            raise ConnectionError(f"MQTT broker at {host}:{port} refused the connection: {why}")

    def _on_connect(
        self, client: object, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.error = str(reason)
            return
        self.connected = True
        # paho does not honour the broker's Receive Maximum (Mosquitto's default is 20 and it
        # refuses the excess with "quota exceeded"); never leave more than that unacknowledged.
        receive_max = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            self.window = min(self._window, receive_max)
        else:
            self.window = self._window

    def _on_disconnect(
        self, client: object, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        self.connected = False

    def _on_publish(
        self, client: object, userdata: object, mid: int, reason: object, properties: object
    ) -> None:
        message = self._in_flight.pop(mid, None)
        if getattr(reason, "value", 0) == NO_MATCHING_SUBSCRIBERS and message is not None:
            self._unheard.append(message)  # still pending: sent again by pump()
            return
        self.pending -= 1
        if getattr(reason, "is_failure", False):
            self.failed += 1
        else:
            self.acked += 1

    def pump(self, timeout: float = 0.0) -> None:
        """Run the network loop once: send, read PUBACKs, keep alive, reconnect if lost."""
        self._since_pump = 0
        rc = self.client.loop(timeout=timeout)
        if self._unheard and self.connected and time.monotonic() >= self._retry_at:
            again, self._unheard = self._unheard, []
            self._retry_at = time.monotonic() + 0.5
            for topic, payload in again:
                info = self.client.publish(topic, payload, qos=self.qos)
                self._in_flight[info.mid] = (topic, payload)
        if rc == self._mqtt.MQTT_ERR_SUCCESS:
            return
        self.connected = False
        time.sleep(min(max(timeout, 0.1), 1.0))
        with contextlib.suppress(OSError):
            self.client.reconnect()

    def send(self, topic: str, payload: bytes) -> None:
        while self.pending >= self.window:
            self.pump(0.05)
        self.pending += 1
        info = self.client.publish(topic, payload, qos=self.qos)
        if self.qos:
            self._in_flight[info.mid] = (topic, payload)
        ok = info.rc == self._mqtt.MQTT_ERR_SUCCESS or (
            self.qos > 0 and info.rc == self._mqtt.MQTT_ERR_NO_CONN
        )
        if not ok:
            self._in_flight.pop(info.mid, None)
            self.pending -= 1
            self.failed += 1
        self._since_pump += 1
        if self._since_pump >= 64:
            self.pump(0.0)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while the connection is served."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, 0.5))

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for every outstanding PUBACK; TimeoutError if none arrives for ``timeout`` s."""
        last, seen = time.monotonic(), self.pending
        while self.pending > 0:
            self.pump(0.05)
            if self.pending != seen:
                last, seen = time.monotonic(), self.pending
            elif time.monotonic() - last > timeout:
                raise TimeoutError(
                    f"{self.pending} messages still unacknowledged by the broker at "
                    f"{self.host}:{self.port} after {timeout:g}s"
                )

    def close(self) -> None:
        self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop(timeout=0.1)


NO_MATCHING_SUBSCRIBERS = 0x10

ProgressCallback = Callable[[PublishResult], None]


def publish(
    network: Network,
    chunks: Iterable[MeterChunk],
    mqtt_url: str,
    *,
    form: Form = "batch",
    batch_size: int = 1000,
    qos: int = 1,
    live: bool = False,
    speed: float = 1.0,
    clock_start: datetime | None = None,
    client_id: str | None = None,
    inflight: int = 1000,
    progress: bool | ProgressCallback = False,
    expected: int | None = None,
    drain_timeout: float = 60.0,
) -> PublishResult:
    """Publish simulated readings to ``symbiont/readings/{partner}/{meter}`` (SPEC §3).

    Backfill (``live=False``): as fast as the broker takes them, ``batch_size`` readings per
    message (``form="single"``: one), at most ``inflight`` unacknowledged in flight; returns
    after every PUBACK has arrived.

    Live (``live=True``): simulated time runs at ``speed`` × the wall clock from
    ``clock_start`` (default now); each reading goes out, one per message, when its time is
    due. Readings already overdue (a meter with more than one reading due, as when the chunks
    start in the past) are sent as a backlog in batches first, so ``simulate(now − 30 days,
    None)`` backfills a month and then runs on live, without a seam in the registers. Ctrl-C
    ends a live run gracefully (``interrupted`` is set). Note that with ``speed`` > 1 the
    readings run ahead of the wall clock, and ingest rejects readings more than 5 minutes in
    the future.

    ``progress``: True shows a rich progress bar on stderr (``expected`` readings as its
    total), or a callable receives the running ``PublishResult`` about 5 times a second.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r} (use batch, single or senml)")
    if not 1 <= batch_size <= 10000:
        raise ValueError("batch_size must be between 1 and 10000")
    if speed <= 0:
        raise ValueError("speed must be positive")
    known = {m.id: m.partner for m in network.meters}

    def checked(stream: Iterable[MeterChunk]) -> Iterator[MeterChunk]:
        for chunk in stream:
            if known.get(chunk.meter_id) != chunk.partner_id:
                raise ValueError(
                    f"meter {chunk.meter_id!r} of {chunk.partner_id!r} is not in network"
                    f" {network.network!r}"
                )
            yield chunk

    result = PublishResult()
    began = time.monotonic()
    publisher = MqttPublisher(
        mqtt_url, client_id=client_id, qos=qos, inflight=inflight, window=max(4 * inflight, 1000)
    )
    report, finish = _progress(progress, expected, result, began)

    def send(topic: str, payload: bytes, count: int) -> None:
        publisher.send(topic, payload)
        result.messages += 1
        result.readings += count
        report()

    try:
        try:
            if live:
                _publish_live(
                    checked(chunks), send, publisher.wait, form, batch_size, speed, clock_start
                )
            else:
                for chunk in checked(chunks):
                    for topic, payload, count in payloads(chunk, form, batch_size):
                        send(topic, payload, count)
            publisher.drain(drain_timeout)
        except KeyboardInterrupt:
            if not live:
                raise
            result.interrupted = True
            with contextlib.suppress(TimeoutError):
                publisher.drain(5.0)
    finally:
        result.acked, result.failed = publisher.acked, publisher.failed
        result.seconds = time.monotonic() - began
        publisher.close()
        finish()
    return result


def _progress(
    progress: bool | ProgressCallback, expected: int | None, result: PublishResult, began: float
) -> tuple[Callable[[], None], Callable[[], None]]:
    if progress is False:
        return (lambda: None), (lambda: None)
    last = [0.0]
    if callable(progress):
        callback = progress

        def report() -> None:
            now = time.monotonic()
            if now - last[0] >= 0.2:
                last[0] = now
                result.seconds = now - began
                callback(result)

        def finish() -> None:
            result.seconds = time.monotonic() - began
            callback(result)

        return report, finish

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("readings · {task.fields[rate]:,.0f}/s · {task.fields[messages]:,} messages"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task("publish", total=expected, rate=0.0, messages=0)
    bar.start()

    def update() -> None:
        elapsed = max(time.monotonic() - began, 1e-9)
        total = expected if expected is None else max(expected, result.readings)
        bar.update(
            task,
            completed=result.readings,
            total=total,
            rate=result.readings / elapsed,
            messages=result.messages,
        )

    def report_bar() -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            update()

    def finish_bar() -> None:
        update()
        bar.stop()

    return report_bar, finish_bar


def _publish_live(
    chunks: Iterable[MeterChunk],
    send: Callable[[str, bytes, int], None],
    sleep: Callable[[float], None],
    form: Form,
    batch_size: int,
    speed: float,
    clock_start: datetime | None,
) -> None:
    origin = _epoch(clock_start) if clock_start is not None else time.time()
    wall0 = time.monotonic()

    def sim_now() -> float:
        return origin + speed * (time.monotonic() - wall0)

    for group in _time_groups(chunks):
        if not group:
            continue
        ts = np.concatenate([c.ts for c in group])
        who = np.concatenate([np.full(c.ts.size, k, dtype=np.int64) for k, c in enumerate(group)])
        pos = np.concatenate([np.arange(c.ts.size, dtype=np.int64) for c in group])
        order = np.argsort(ts, kind="stable")
        ts, who, pos = ts[order], who[order], pos[order]
        i = 0
        while i < ts.size:
            now = sim_now()
            j = int(np.searchsorted(ts, now, side="right"))
            if j <= i:
                sleep(min((float(ts[i]) - now) / speed, 1.0))
                continue
            due_who, due_pos = who[i:j], pos[i:j]
            for k in np.unique(due_who).tolist():
                chunk = group[k]
                sel = due_pos[due_who == k]
                piece = MeterChunk(
                    chunk.meter_id,
                    chunk.partner_id,
                    chunk.unit,
                    chunk.reading,
                    chunk.start,
                    chunk.end,
                    chunk.ts[sel],
                    chunk.value[sel],
                )
                backlog = sel.size > 1
                size = batch_size if backlog else 1
                piece_form: Form = form if backlog or form == "senml" else "single"
                for topic, payload, count in payloads(piece, piece_form, size):
                    send(topic, payload, count)
            i = j


def _time_groups(chunks: Iterable[MeterChunk]) -> Iterator[list[MeterChunk]]:
    """Consecutive chunks of the same time span, together."""
    group: list[MeterChunk] = []
    span: tuple[float, float] | None = None
    for chunk in chunks:
        if span is not None and (chunk.start, chunk.end) != span:
            yield group
            group = []
        span = (chunk.start, chunk.end)
        group.append(chunk)
    if group:
        yield group


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``symbiont simulate``."""
    parser.add_argument("file", help="the network file (YAML)")
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="T",
        help="start (ISO 8601; a date or a time without offset is in the network's zone)."
        " With --to: backfill [T, --to) and exit. Alone: publish what T to now would have"
        " sent (in batches), then go on live",
    )
    parser.add_argument("--to", metavar="T", help="end of the backfill (needs --from)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="live mode: simulated seconds per wall-clock second (default 1)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault, KIND:SUBJECT[:SIZE][@START][+DURATION], e.g. "
        "leak:EXCHANGE:5%%@2026-10-10T00:00Z, drift:METER:3%%, stuck:METER@T+6h, "
        "gap:METER@T+2h, reset:METER@T, spike:METER:10@T (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--form",
        choices=FORMS,
        default="batch",
        help="payload form: batch (JSON arrays), single (one reading per message), senml",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="readings per message in a backfill (1-10000, default 1000)",
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    parser.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="broker, mqtt://user:pass@host:1883 (default: $SYMBIONT_MQTT_URL)",
    )
    parser.add_argument("--client-id", metavar="ID", help="MQTT client id (default: random)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``symbiont simulate``: backfill a range, or publish live until Ctrl-C."""
    err = sys.stderr
    try:
        network = load_network(args.file)
    except NetworkError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=err)
        return 2
    url = args.mqtt_url or settings.mqtt_url
    if not url:
        print("error: no broker: give --mqtt-url or set SYMBIONT_MQTT_URL", file=err)
        return 2
    try:
        parse_mqtt_url(url)
        faults = [parse_fault(spec, network) for spec in args.fault]
        start = parse_time(args.from_, network.tz) if args.from_ else None
        end = parse_time(args.to, network.tz) if args.to else None
        if end is not None and start is None:
            raise ValueError("--to needs --from")
        if start is not None and end is not None and end <= start:
            raise ValueError("--to must be after --from")
        if args.speed <= 0:
            raise ValueError("--speed must be positive")
        if not 1 <= args.batch_size <= 10000:
            raise ValueError("--batch-size must be between 1 and 10000")
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    try:
        if start is not None and end is not None:
            chunks = simulate(network, start, end, faults=faults, seed=args.seed)
            result = publish(
                network,
                chunks,
                url,
                form=args.form,
                batch_size=args.batch_size,
                qos=args.qos,
                client_id=args.client_id,
                progress=err.isatty(),
                expected=expected_readings(network, start, end),
            )
            print(
                f"published {result.readings:,} readings in {result.messages:,} messages"
                f" in {result.seconds:.1f}s ({result.rate:,.0f} readings/s);"
                f" {result.acked:,} acknowledged, {result.failed:,} failed",
                file=err,
            )
            return 0 if result.failed == 0 else 1
        now = datetime.now(UTC).replace(microsecond=0)
        sim_start = start or now
        catch_up = ""
        if sim_start < now:
            catch_up = f", catching up from {sim_start.isoformat().replace('+00:00', 'Z')} first"
        print(
            f"simulating {len(network.meters)} meters of {network.network} live at"
            f" {args.speed:g}x{catch_up}, to {url.split('@')[-1]}; Ctrl-C to stop",
            file=err,
        )
        if args.speed > 1:
            print(
                "note: above 1x the simulated clock runs ahead of the wall clock; ingest"
                " rejects readings more than 5 minutes in the future",
                file=err,
            )
        chunks = simulate(network, sim_start, None, faults=faults, seed=args.seed)
        result = publish(
            network,
            chunks,
            url,
            form=args.form,
            batch_size=args.batch_size,
            qos=args.qos,
            client_id=args.client_id,
            live=True,
            speed=args.speed,
            clock_start=now,
        )
        print(
            f"stopped: published {result.readings:,} readings in {result.messages:,} messages",
            file=err,
        )
        return 0
    except (ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=err)
        return 1
