"""The simulator's building blocks: counter-based random numbers (every value a hash of seed,
what and when, so no value depends on where a simulation started or how it was chunked) and the
daily and seasonal profiles of a flow in the network's time zone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    pass


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_U64 = npt.NDArray[np.uint64]

CELL = 60.0  # seconds: the resolution of the flow model
_CELL_H = CELL / 3600.0
UNLOAD_S = 15 * 60.0  # a truck seen by a continuous meter: a 15-minute load

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
