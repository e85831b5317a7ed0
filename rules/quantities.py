"""From readings to window quantities: pure, vectorised, no I/O, no clock.

One call turns one meter's readings (canonical units, sorted by time) into a quantity per
window, with what the rules need beside it: coverage, reading counts, first and last reading,
``stuck``, negative values and counter resets.  Every step is a numpy operation over whole
arrays (``searchsorted``, ``interp``, ``cumsum``); nothing loops over readings, so a month of
one-minute readings of a meter (43,200) turns into hourly windows in a few milliseconds.

Inputs
------
* ``ts``: epoch seconds (float), sorted ascending;
  ``value``: the readings in the canonical unit of the meter's reading type (a register in
  MWh/m3/t for ``total``, MWh/h, m3/h or t/h for ``rate``, a quantity for ``delta``).
  A value that is not a finite number or is beyond ``±max_abs`` (default
  :data:`MAX_ABS_VALUE`, what ingest accepts) is left out and counted in its window's
  ``invalid``: such a reading can only have been stored around ingest (an older version, an
  import, SQL), and its window is not to be trusted (the rules engine reports it as an error
  rather than a quantity). A reading with a non-finite ``ts`` is dropped.
* ``windows``: ``[(start, end), ...]`` as aware datetimes or epoch seconds, or an ``(n, 2)``
  array of epoch seconds.  Windows are independent of each other: they need not be contiguous
  or sorted (``core.windows.windows_between`` gives the usual ones).
* The caller passes a margin of readings around the windows (for ``total`` the reading just
  before the first window and the one just after the last; for ``rate`` one ``interval``
  either side) so that window edges can be interpolated.  Without a margin the quantity covers
  only the part of the window between the first and the last reading (no extrapolation) and
  the coverage says so.

The rules chosen
----------------
``total``
    The register is turned into a cumulative quantity ``C`` at every reading (``C₀ = 0``,
    ``C_{k+1} = C_k + increment_k``) and a window's quantity is ``C(end) − C(start)``, ``C``
    interpolated linearly between readings.  Without resets this is exactly the register
    interpolated at the window's end minus at its start.

    *Counter reset*: a drop ``v_{k+1} < v_k − tol`` with ``tol = reset_tolerance ·
    max(|v_k|, |v_{k+1}|, 1)`` (default 1e-9 relative: smaller drops are rounding jitter, kept
    as they are and counted in ``negatives``).  The new register carries on, so only the
    interval ``[t_k, t_{k+1}]`` across the reset is unknown; its increment is estimated as
    ``rate × (t_{k+1} − t_k)`` with ``rate`` the mean rate of the adjacent intervals (``k−1``
    and ``k+1``) that are regular (no reset, no gap longer than ``gap_factor × interval``),
    clamped at zero.  When neither neighbour is usable the new register's own count,
    ``max(v_{k+1}, 0)``, is taken (a replaced meter that started at zero).  The increment is
    therefore never negative, and neither is a window's quantity because of a reset.  Every
    reset is reported (``WindowQuantities.reset_events``: reading index, ts, register before
    and after) and counted in the window that holds the first reading after the drop.

    *Outliers*: a single reading that breaks an otherwise increasing run — the readings either
    side of it are in order (``v_{k−1} ≤ v_{k+1}``) but it is above the next or below the
    previous one (a spiked register) — is not a reset: it is replaced by the interpolation of
    its neighbours and counted in ``outliers``.  A reset lands far below the readings before
    it (a new register starts near zero), so only a drop smaller than one interval's count
    (``v_{k−1} ≤ v_{k+1} < v_k``) is taken for an outlier of ``v_k``; the quantity then stays
    right and no ``counter_reset`` is reported for that small step back.

``rate``
    The rate (per hour) is linear between readings and integrated exactly (trapezoids; a
    trapezoid cut by a window edge is split at the rate interpolated there), in hours.
    Negative rates are integrated as they are and counted in ``negatives``.

``delta``
    The sum of the values with ``start ≤ ts < end``; negative values are counted.  A window
    without readings has quantity 0 (nothing was delivered) once it has begun, ``nan`` before.

Gaps and coverage (``total`` and ``rate``)
    Readings span the time around them: each reading covers ``interval / 2`` either side, and
    two consecutive readings at most ``gap_factor × interval`` apart (default 1.5) cover all
    the time between them.  Coverage is the covered part of the window over its length.  So
    readings every ``interval`` give 1.0, also when they sit exactly on the window edges or
    a few seconds after them, and a window with half of its readings missing gets about 0.5
    (a missing reading costs ``interval`` of coverage; a window whose end falls in a gap loses
    the part after its last reading's half interval).  Across a longer gap the quantity is
    still interpolated (the register or rate is taken as linear across it, so every window of
    the gap gets its share and the windows add up to the register's difference); only the
    coverage shows the gap: a window wholly inside it is interpolated with coverage 0.

Breaks (``max_gap``, ``total`` and ``rate``)
    Two consecutive readings more than ``max_gap`` seconds apart (default: no limit) are a
    break in the data, not a gap: nothing is interpolated across it.  A register's count
    across a break is not attributed to any window (like a replaced meter's, it carries on
    from the new reading), a rate contributes nothing there, the windows wholly inside a break
    have no data (``nan``, coverage 0) and a window that holds one of its ends gets only the
    part on its readings' side.

Coverage (``delta``)
    A delta meter's window is complete once it has ended: coverage 1.0 when ``now ≥
    end``, the elapsed fraction while it runs, 0 before it starts.  ``now`` is passed in (never
    read from the clock); ``None`` means every window has ended (history, backfills).

``quantity`` is ``nan`` (and coverage 0) when there is no data for a window at all: for
``total``/``rate`` when fewer than two readings are given or the window does not overlap
``[ts₀, ts_last]``.

``stuck`` (all types): at least two readings in the window and all of them equal — a register
that did not count, a rate (or ticket) that repeats itself.  Whether that is a fault (the
counterpart shows flow) is for the ``meter_stuck`` rule to decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from core.network import ReadingType
from core.units import MAX_CANONICAL_VALUE

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Window bounds: ``[(start, end), ...]`` as aware datetimes or epoch seconds, or an
#: ``(n, 2)`` array of epoch seconds.
Windows = Sequence[tuple[datetime | float, datetime | float]] | FloatArray

GAP_FACTOR = 1.5
"""Consecutive readings at most this many intervals apart cover the time between them."""

RESET_TOLERANCE = 1e-9
"""A register drop larger than this fraction of the register is a counter reset."""

MAX_ABS_VALUE = MAX_CANONICAL_VALUE
"""The largest magnitude of a reading in canonical units that ingest accepts; readings beyond
it are left out of the quantities and counted in ``invalid``. Values within it keep every
quantity, σ and sum far inside the floating-point range."""

__all__ = [
    "GAP_FACTOR",
    "MAX_ABS_VALUE",
    "RESET_TOLERANCE",
    "Resets",
    "WindowQuantities",
    "Windows",
    "coverage",
    "delta_quantities",
    "invalid_readings",
    "rate_quantities",
    "total_quantities",
    "window_edges",
    "window_quantities",
]


@dataclass(frozen=True, eq=False)
class Resets:
    """Counter resets of a register: reading ``index`` (first after the drop) and its ``ts``,
    the register ``before`` (reading ``index − 1``) and ``after`` the drop."""

    index: IntArray
    ts: FloatArray
    before: FloatArray
    after: FloatArray

    def __len__(self) -> int:
        return int(self.index.size)

    @staticmethod
    def none() -> Resets:
        return Resets(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))


@dataclass(frozen=True, eq=False)
class WindowQuantities:
    """One meter's windows; every array has one element per window, in the input order.

    ``quantity`` is canonical (MWh, m3, t), ``nan`` without data; ``coverage`` in [0, 1];
    ``readings`` counts readings with ``start ≤ ts < end`` and ``first_ts``/``last_ts`` are
    the first and last of them (``nan`` when none); ``negatives`` counts negative rates or
    deltas (for ``total``: drops below the reset tolerance); ``resets`` and ``outliers`` count
    the counter resets and corrected outlier readings whose reading lies in the window;
    ``invalid`` counts the readings in the window left out because their value is not a
    finite number or is beyond ``max_abs``.
    ``reset_events`` lists every reset found in the readings passed in (margins included).
    """

    start: FloatArray
    end: FloatArray
    quantity: FloatArray
    coverage: FloatArray
    readings: IntArray
    first_ts: FloatArray
    last_ts: FloatArray
    stuck: BoolArray
    negatives: IntArray
    resets: IntArray
    outliers: IntArray
    reset_events: Resets
    invalid: IntArray

    def __len__(self) -> int:
        return int(self.start.size)


# ----------------------------------------------------------------------------- inputs


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"window bound {when.isoformat()} has no time zone")
        return when.timestamp()
    return float(when)


def window_edges(windows: Windows) -> tuple[FloatArray, FloatArray]:
    """``(starts, ends)`` in epoch seconds; raises ValueError for an empty or reversed one."""
    if isinstance(windows, np.ndarray):
        arr = np.asarray(windows, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"windows must have shape (n, 2), not {arr.shape}")
        starts, ends = arr[:, 0].copy(), arr[:, 1].copy()
    else:
        starts = np.array([_epoch(s) for s, _ in windows], dtype=np.float64)
        ends = np.array([_epoch(e) for _, e in windows], dtype=np.float64)
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()):
        raise ValueError("window bounds must be finite")
    if (ends <= starts).any():
        i = int(np.flatnonzero(ends <= starts)[0])
        raise ValueError(f"window {i} ends ({ends[i]}) before it starts ({starts[i]})")
    return starts, ends


def invalid_readings(value: npt.ArrayLike, max_abs: float = MAX_ABS_VALUE) -> BoolArray:
    """Per reading: its value is not a finite number or is beyond ``±max_abs``."""
    v = np.asarray(value, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out: BoolArray = ~(np.abs(v) <= max_abs)
    return out


def _readings(
    ts: npt.ArrayLike, value: npt.ArrayLike, max_abs: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The readings to compute with, and the timestamps of those left out (invalid values)."""
    t = np.asarray(ts, dtype=np.float64).ravel()
    v = np.asarray(value, dtype=np.float64).ravel()
    if t.shape != v.shape:
        raise ValueError(f"ts and value differ in length ({t.size} != {v.size})")
    bad = invalid_readings(v, max_abs)
    left_out = t[bad & np.isfinite(t)]
    ok = np.isfinite(t) & ~bad
    if not ok.all():
        t, v = t[ok], v[ok]
    if t.size > 1 and (np.diff(t) < 0).any():
        raise ValueError("readings must be sorted by ts")
    return t, v, left_out


def _invalid(left_out: FloatArray, starts: FloatArray, ends: FloatArray) -> IntArray:
    """How many left-out readings lie in each window ``[start, end)``."""
    if left_out.size == 0:
        return np.zeros(starts.size, dtype=np.int64)
    ordered = np.sort(left_out)
    out: IntArray = (
        np.searchsorted(ordered, ends, side="left") - np.searchsorted(ordered, starts, side="left")
    ).astype(np.int64)
    return out


def _check_interval(interval: float | None, gap_factor: float) -> float:
    if interval is None or not math.isfinite(interval) or interval <= 0:
        raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
    if not gap_factor >= 1.0:
        raise ValueError(f"gap_factor must be at least 1, not {gap_factor!r}")
    return float(interval)


# --------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class _Slices:
    """Per window: the readings ``i0 ≤ i < i1`` with ``start ≤ ts < end``."""

    i0: IntArray
    i1: IntArray

    @property
    def count(self) -> IntArray:
        out: IntArray = self.i1 - self.i0
        return out

    def total(self, per_reading: FloatArray | IntArray) -> FloatArray:
        """Sum of ``per_reading`` over each window's readings (exact for integers)."""
        cum = np.concatenate(([0.0], np.cumsum(per_reading, dtype=np.float64)))
        out: FloatArray = cum[self.i1] - cum[self.i0]
        return out

    def counts(self, flags: BoolArray) -> IntArray:
        cum = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
        out: IntArray = cum[self.i1] - cum[self.i0]
        return out


def _slices(ts: FloatArray, starts: FloatArray, ends: FloatArray) -> _Slices:
    i0 = np.searchsorted(ts, starts, side="left").astype(np.int64)
    i1 = np.searchsorted(ts, ends, side="left").astype(np.int64)
    return _Slices(i0, i1)


def _first_last(ts: FloatArray, s: _Slices) -> tuple[FloatArray, FloatArray]:
    has = s.count > 0
    first = np.full(s.i0.size, np.nan)
    last = np.full(s.i0.size, np.nan)
    first[has] = ts[s.i0[has]]
    last[has] = ts[s.i1[has] - 1]
    return first, last


def _stuck(value: FloatArray, s: _Slices) -> BoolArray:
    """At least two readings in the window, all equal."""
    if value.size < 2:
        return np.zeros(s.i0.size, dtype=bool)
    changes = np.concatenate(([0], np.cumsum(value[1:] != value[:-1], dtype=np.int64)))
    many = s.count >= 2
    last = np.where(many, s.i1 - 1, 0)
    first = np.where(many, s.i0, 0)
    out: BoolArray = many & (changes[last] == changes[first])
    return out


def coverage(
    ts: npt.ArrayLike,
    starts: FloatArray,
    ends: FloatArray,
    interval: float,
    *,
    gap_factor: float = GAP_FACTOR,
) -> FloatArray:
    """The fraction of each window ``[start, end)`` that readings at ``ts`` cover.

    Each reading covers ``interval / 2`` either side; consecutive readings at most
    ``gap_factor × interval`` apart cover all the time between them.  The covered set is
    ``[ts₀ − h, ts_last + h]`` less the holes ``(t_k + h, t_{k+1} − h)`` of the longer gaps;
    its cumulative length is piecewise linear, so every window is two ``np.interp`` lookups.
    """
    t = np.asarray(ts, dtype=np.float64)
    interval = _check_interval(interval, gap_factor)
    if t.size == 0:
        return np.zeros(starts.size)
    h = interval / 2.0
    gaps = np.diff(t)
    hole = gaps > gap_factor * interval
    hole_start = t[:-1][hole] + h
    hole_end = t[1:][hole] - h
    x0 = t[0] - h
    lost = np.cumsum(hole_end - hole_start)
    lost_before = np.concatenate(([0.0], lost[:-1]))
    m = hole_start.size
    knots = np.empty(2 * m + 2)
    covered = np.empty(2 * m + 2)
    knots[0], covered[0] = x0, 0.0
    knots[1:-1:2], knots[2:-1:2] = hole_start, hole_end
    covered[1:-1:2] = hole_start - x0 - lost_before
    covered[2:-1:2] = covered[1:-1:2]
    knots[-1] = t[-1] + h
    covered[-1] = knots[-1] - x0 - (float(lost[-1]) if m else 0.0)
    spanned = np.interp(ends, knots, covered) - np.interp(starts, knots, covered)
    frac = spanned / (ends - starts)
    # Epoch seconds carry ~1e-7 s of rounding: snap what is full or empty to within 1e-9.
    frac[frac > 1.0 - 1e-9] = 1.0
    frac[frac < 1e-9] = 0.0
    out: FloatArray = frac
    return out


def _no_data(ts: FloatArray, starts: FloatArray, ends: FloatArray) -> BoolArray:
    if ts.size < 2:
        return np.ones(starts.size, dtype=bool)
    out: BoolArray = (ends <= ts[0]) | (starts >= ts[-1])
    return out


def _breaks(ts: FloatArray, max_gap: float | None) -> BoolArray | None:
    """Per interval between consecutive readings: longer than ``max_gap``? (``None`` when
    there is no limit or no such interval.)"""
    if max_gap is None:
        return None
    if not max_gap > 0:
        raise ValueError(f"max_gap must be a positive number of seconds, not {max_gap!r}")
    if ts.size < 2:
        return None
    brk: BoolArray = np.diff(ts) > max_gap
    return brk if brk.any() else None


def _inside_breaks(
    ts: FloatArray, brk: BoolArray, starts: FloatArray, ends: FloatArray
) -> BoolArray:
    """Windows wholly inside a break: ``t_k ≤ start`` and ``end ≤ t_{k+1}``."""
    k = np.searchsorted(ts, starts, side="right") - 1
    valid = (k >= 0) & (k < ts.size - 1)
    k = np.clip(k, 0, ts.size - 2)
    out: BoolArray = valid & brk[k] & (ends <= ts[k + 1])
    return out


@dataclass(frozen=True, eq=False)
class _Laid:
    """One meter's valid readings laid over the windows: what every reading type starts from."""

    starts: FloatArray
    ends: FloatArray
    t: FloatArray
    v: FloatArray
    invalid: IntArray
    s: _Slices
    first: FloatArray
    last: FloatArray

    def quantities(
        self,
        quantity: FloatArray,
        cov: FloatArray,
        v: FloatArray,
        negatives: IntArray,
        resets: IntArray,
        outliers: IntArray,
        events: Resets,
    ) -> WindowQuantities:
        """The windows' quantities, with ``stuck`` judged on the values ``v`` computed with."""
        return WindowQuantities(
            self.starts,
            self.ends,
            quantity,
            cov,
            self.s.count,
            self.first,
            self.last,
            _stuck(v, self.s),
            negatives,
            resets,
            outliers,
            events,
            self.invalid,
        )


def _lay(ts: npt.ArrayLike, value: npt.ArrayLike, windows: Windows, max_abs: float) -> _Laid:
    starts, ends = window_edges(windows)
    t, v, left_out = _readings(ts, value, max_abs)
    s = _slices(t, starts, ends)
    first, last = _first_last(t, s)
    return _Laid(starts, ends, t, v, _invalid(left_out, starts, ends), s, first, last)


def _blank_no_data(
    w: _Laid, quantity: FloatArray, brk: BoolArray | None, interval: float, gap_factor: float
) -> FloatArray:
    """Sets ``quantity`` to ``nan`` in the windows without data (outside the readings, or wholly
    inside a break) and returns the coverage, 0 in those windows."""
    none = _no_data(w.t, w.starts, w.ends)
    if brk is not None:
        none |= _inside_breaks(w.t, brk, w.starts, w.ends)
    quantity[none] = np.nan
    cov = coverage(w.t, w.starts, w.ends, interval, gap_factor=gap_factor)
    cov[none] = 0.0
    return cov


# ----------------------------------------------------------------------------- total


def _outliers(ts: FloatArray, v: FloatArray, rel_tol: float) -> BoolArray:
    """Single readings out of order with neighbours that are in order (a spiked register)."""
    out = np.zeros(v.size, dtype=bool)
    if v.size < 3:
        return out
    prev, mid, nxt = v[:-2], v[1:-1], v[2:]

    def tol(a: FloatArray, b: FloatArray) -> FloatArray:
        t: FloatArray = rel_tol * np.maximum(np.maximum(np.abs(a), np.abs(b)), 1.0)
        return t

    neighbours_in_order = nxt >= prev - tol(prev, nxt)
    out_of_order = (mid > nxt + tol(mid, nxt)) | (mid < prev - tol(prev, mid))
    flagged = neighbours_in_order & out_of_order
    # Of two flagged in a row, only the first: its correction puts the second back in order
    # or leaves an ordinary drop (a reset) behind.
    flagged[1:] &= ~flagged[:-1]
    out[1:-1] = flagged
    return out


def _register_increments(
    ts: FloatArray, v: FloatArray, interval: float, gap_factor: float, rel_tol: float
) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray, BoolArray]:
    """(increments, register with outliers corrected, reset and jitter drop per interval,
    outlier per reading)."""
    outlier = _outliers(ts, v, rel_tol)
    if outlier.any():
        k = np.flatnonzero(outlier)
        span = ts[k + 1] - ts[k - 1]
        frac = np.divide(ts[k] - ts[k - 1], span, out=np.full(k.size, 0.5), where=span > 0)
        v = v.copy()
        v[k] = v[k - 1] + (v[k + 1] - v[k - 1]) * frac
    d = np.diff(v)
    dt = np.diff(ts)
    tol = rel_tol * np.maximum(np.maximum(np.abs(v[:-1]), np.abs(v[1:])), 1.0)
    reset = d < -tol
    jitter = (d < 0) & ~reset
    if not reset.any():
        return d, v, reset, jitter, outlier
    regular = ~reset & (dt > 0) & (dt <= gap_factor * interval)
    rate = np.where(regular, d / np.where(dt > 0, dt, 1.0), 0.0)
    zero, no = np.array([0.0]), np.array([False])
    prev_rate, prev_ok = np.concatenate((zero, rate[:-1])), np.concatenate((no, regular[:-1]))
    next_rate, next_ok = np.concatenate((rate[1:], zero)), np.concatenate((regular[1:], no))
    n_ok = prev_ok.astype(np.int64) + next_ok
    mean_rate = (prev_rate * prev_ok + next_rate * next_ok) / np.maximum(n_ok, 1)
    estimate = np.where(n_ok > 0, np.maximum(mean_rate, 0.0) * dt, np.maximum(v[1:], 0.0))
    increments: FloatArray = np.where(reset, estimate, d)
    return increments, v, reset, jitter, outlier


def total_quantities(
    ts: npt.ArrayLike,
    value: npt.ArrayLike,
    windows: Windows,
    *,
    interval: float,
    gap_factor: float = GAP_FACTOR,
    reset_tolerance: float = RESET_TOLERANCE,
    max_gap: float | None = None,
    max_abs: float = MAX_ABS_VALUE,
) -> WindowQuantities:
    """Window quantities of a cumulative register (see the module's docstring)."""
    w = _lay(ts, value, windows, max_abs)
    interval = _check_interval(interval, gap_factor)
    t = w.t
    n_win = w.starts.size
    if t.size < 2:
        zeros = np.zeros(n_win, dtype=np.int64)
        return w.quantities(
            np.full(n_win, np.nan),
            np.zeros(n_win),
            w.v,
            zeros,
            zeros.copy(),
            zeros.copy(),
            Resets.none(),
        )
    inc, fixed, reset, jitter, outlier = _register_increments(
        t, w.v, interval, gap_factor, reset_tolerance
    )
    brk = _breaks(t, max_gap)
    if brk is not None:
        inc = np.where(brk, 0.0, inc)
    cum = np.concatenate(([0.0], np.cumsum(inc)))
    quantity = np.interp(w.ends, t, cum) - np.interp(w.starts, t, cum)
    cov = _blank_no_data(w, quantity, brk, interval, gap_factor)
    # Per reading: did the interval ending at this reading drop (reset / jitter)?
    reset_at = np.concatenate(([False], reset))
    jitter_at = np.concatenate(([False], jitter))
    k = np.flatnonzero(reset_at)
    events = Resets(k.astype(np.int64), t[k], fixed[k - 1], fixed[k])
    return w.quantities(
        quantity,
        cov,
        w.v,
        w.s.counts(jitter_at),
        w.s.counts(reset_at),
        w.s.counts(outlier),
        events,
    )


# ------------------------------------------------------------------------------ rate


def _rate_integral(
    ts: FloatArray, r: FloatArray, at: FloatArray, brk: BoolArray | None = None
) -> FloatArray:
    """∫ rate dt (hours) from ts₀ to each ``at``, the rate linear between readings.

    Constant before the first reading (0) and after the last one, and across the intervals
    ``brk`` marks (breaks).  Inside an interval the integral is quadratic in the elapsed time,
    so a trapezoid cut by a window edge is split exactly at the rate interpolated there.
    """
    dt = np.diff(ts)
    area = (r[:-1] + r[1:]) * 0.5 * dt
    if brk is not None:
        area = np.where(brk, 0.0, area)
    cum = np.concatenate(([0.0], np.cumsum(area)))
    k = np.clip(np.searchsorted(ts, at, side="right") - 1, 0, ts.size - 2)
    width = dt[k]
    tau = np.clip(at - ts[k], 0.0, width)
    if brk is not None:
        tau = np.where(brk[k], 0.0, tau)
    slope = np.divide(r[k + 1] - r[k], width, out=np.zeros(k.size), where=width > 0)
    out: FloatArray = (cum[k] + r[k] * tau + 0.5 * slope * tau * tau) / 3600.0
    return out


SPIKE_FACTOR = 3.0


def _rate_spikes(v: FloatArray, factor: float = SPIKE_FACTOR) -> BoolArray:
    """Single rate readings far off their two neighbours, which agree with each other: more
    than ``factor`` × above the larger or below the smaller (both neighbours positive and
    within ``factor`` of each other). A real change of flow moves more than one reading."""
    out = np.zeros(v.size, dtype=bool)
    if v.size < 3:
        return out
    prev, mid, nxt = v[:-2], v[1:-1], v[2:]
    lo = np.minimum(prev, nxt)
    hi = np.maximum(prev, nxt)
    steady = (lo > 0) & (hi <= factor * lo)
    flagged = steady & ((mid > factor * hi) | (mid * factor < lo))
    flagged[1:] &= ~flagged[:-1]
    out[1:-1] = flagged
    return out


def rate_quantities(
    ts: npt.ArrayLike,
    value: npt.ArrayLike,
    windows: Windows,
    *,
    interval: float,
    gap_factor: float = GAP_FACTOR,
    max_gap: float | None = None,
    max_abs: float = MAX_ABS_VALUE,
) -> WindowQuantities:
    """Window quantities of an instantaneous rate per hour (see the module's docstring)."""
    w = _lay(ts, value, windows, max_abs)
    interval = _check_interval(interval, gap_factor)
    t, v = w.t, w.v
    spikes = _rate_spikes(v)
    if spikes.any():  # integrate across a spike as if it were the mean of its neighbours
        v = v.copy()
        idx = np.flatnonzero(spikes)
        v[idx] = 0.5 * (v[idx - 1] + v[idx + 1])
    if t.size < 2:
        brk = None
        quantity = np.full(w.starts.size, np.nan)
    else:
        brk = _breaks(t, max_gap)
        quantity = _rate_integral(t, v, w.ends, brk) - _rate_integral(t, v, w.starts, brk)
    cov = _blank_no_data(w, quantity, brk, interval, gap_factor)
    zeros = np.zeros(w.starts.size, dtype=np.int64)
    return w.quantities(
        quantity, cov, v, w.s.counts(v < 0), zeros, w.s.counts(spikes), Resets.none()
    )


# ----------------------------------------------------------------------------- delta


def delta_quantities(
    ts: npt.ArrayLike,
    value: npt.ArrayLike,
    windows: Windows,
    *,
    now: datetime | float | None = None,
    max_abs: float = MAX_ABS_VALUE,
) -> WindowQuantities:
    """Window quantities of a meter that sends quantities (tickets): the sum over
    ``start ≤ ts < end``; coverage by elapsed time against ``now`` (``None``: all ended)."""
    w = _lay(ts, value, windows, max_abs)
    quantity = w.s.total(w.v)
    if now is None:
        cov = np.ones(w.starts.size)
    else:
        cov = np.clip((_epoch(now) - w.starts) / (w.ends - w.starts), 0.0, 1.0)
        quantity[(cov <= 0.0) & (w.s.count == 0)] = np.nan
    zeros = np.zeros(w.starts.size, dtype=np.int64)
    return w.quantities(quantity, cov, w.v, w.s.counts(w.v < 0), zeros, zeros.copy(), Resets.none())


# --------------------------------------------------------------------------- dispatch


def window_quantities(
    reading: ReadingType | str,
    ts: npt.ArrayLike,
    value: npt.ArrayLike,
    windows: Windows,
    *,
    interval: float | None = None,
    now: datetime | float | None = None,
    gap_factor: float = GAP_FACTOR,
    reset_tolerance: float = RESET_TOLERANCE,
    max_gap: float | None = None,
    max_abs: float = MAX_ABS_VALUE,
) -> WindowQuantities:
    """Window quantities of one meter by its reading type (``Meter.reading``).

    ``interval`` (``Meter.interval``, seconds) is required for ``total`` and ``rate``;
    ``now`` is used only for ``delta`` coverage, ``max_gap`` (seconds) only for ``total``
    and ``rate``.
    """
    kind = ReadingType(reading)
    if kind == ReadingType.delta:
        return delta_quantities(ts, value, windows, now=now, max_abs=max_abs)
    if interval is None:
        raise ValueError(f"a {kind.value} meter needs its interval")
    if kind == ReadingType.total:
        return total_quantities(
            ts,
            value,
            windows,
            interval=interval,
            gap_factor=gap_factor,
            reset_tolerance=reset_tolerance,
            max_gap=max_gap,
            max_abs=max_abs,
        )
    return rate_quantities(
        ts,
        value,
        windows,
        interval=interval,
        gap_factor=gap_factor,
        max_gap=max_gap,
        max_abs=max_abs,
    )


def outlier_times(
    reading: ReadingType | str,
    ts: npt.ArrayLike,
    value: npt.ArrayLike,
    *,
    reset_tolerance: float = RESET_TOLERANCE,
) -> FloatArray:
    """The ``ts`` of the readings that :func:`window_quantities` leaves out as outliers
    (a spiked register reading, a rate far off both neighbours); delta meters have none.
    Pass the readings around the instants of interest with a neighbour either side."""
    kind = ReadingType(reading)
    t, v, _ = _readings(ts, value, MAX_ABS_VALUE)
    if kind == ReadingType.total:
        flagged = _outliers(t, v, reset_tolerance)
    elif kind == ReadingType.rate:
        flagged = _rate_spikes(v)
    else:
        flagged = np.zeros(t.size, dtype=bool)
    out: FloatArray = t[flagged]
    return out


def repeat_run(
    ts: npt.ArrayLike, value: npt.ArrayLike, at: float
) -> tuple[float | None, float | None]:
    """Around instant ``at`` inside a run of identical readings (a stuck meter): the ``ts`` of
    the first reading of the run that repeats its predecessor, and of the first reading after
    the run that differs from its predecessor. None where the run reaches the end of the
    readings given (it began before them, or it has not ended)."""
    t, v, _ = _readings(ts, value, MAX_ABS_VALUE)
    if t.size == 0:
        return None, None
    j = int(np.searchsorted(t, at, side="left"))
    j = min(j, t.size - 1)
    changed = np.flatnonzero(v[1:] != v[:-1]) + 1  # readings that differ from their predecessor
    k = int(np.searchsorted(changed, j, side="right"))  # changes up to reading j
    began: float | None = None
    if k > 0 and changed[k - 1] + 1 < t.size:  # the run starts at reading changed[k − 1]
        began = float(t[changed[k - 1] + 1])
    ended = float(t[changed[k]]) if k < changed.size else None
    return began, ended
