"""Window quantities of many meters at once, bit for bit what :func:`window_quantities` gives.

:func:`window_quantities` costs about a hundred microseconds a call whatever the size of its
input, nearly all of it numpy's per-call overhead: under sparse load (every meter sending a
reading a minute) the rules engine calls it for each meter with a handful of readings.
:func:`window_quantities_many` lays the readings of many meters side by side and does the
work in a few numpy passes over all of them, with the arithmetic of ``rules.quantities``
repeated operation for operation, so every field comes out equal (``nan`` where it is ``nan``).

Items are split by what they need:

* the *bulk* path takes the common cases: ``total`` registers that never go down, ``rate``
  (single-reading spikes included) and ``delta``, every reading valid and with a finite time,
  strictly increasing times for ``total``/``rate`` (non-decreasing for ``delta``), at least two
  readings for ``total``/``rate`` and no break (``max_gap``); gaps longer than
  ``gap_factor × interval`` (holes in the coverage) are taken too;
* anything else (a counter reset, a small drop or an outlier of a register, an invalid or
  non-finite value, unsorted times, a break, an argument :func:`window_quantities` rejects)
  goes to :meth:`QuantityItem.compute`, one item at a time, which is the reference itself.

The bulk path pads each item's readings to a row of a matrix (repeating its last reading), a
few lengths per octave so little is wasted, and looks windows up per row: a broadcast
comparison for short rows, else the same in two steps (the last reading of every block of
``√width`` readings, then the block found).  Cumulative sums run
along the rows (``np.cumsum(axis=1)`` adds in the same order as the 1-D sum of one item) and
``np.interp`` is written out with the same formula numpy uses, so the floats are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from core.network import ReadingType
from rules.quantities import (
    GAP_FACTOR,
    MAX_ABS_VALUE,
    RESET_TOLERANCE,
    SPIKE_FACTOR,
    BoolArray,
    FloatArray,
    IntArray,
    Resets,
    WindowQuantities,
    Windows,
    _epoch,
    window_quantities,
)

__all__ = [
    "ManyOutcome",
    "QuantityItem",
    "window_quantities_many",
    "window_quantities_many_outcome",
]

_TOTAL, _RATE, _DELTA = 0, 1, 2
_KIND = {ReadingType.total: _TOTAL, ReadingType.rate: _RATE, ReadingType.delta: _DELTA}

_MAX_BULK_T = 1e12  # |ts| beyond this (year 33,000): the fallback (no overflow in the bulk)
_MAX_BULK_V = 1e100  # |value| beyond this: the fallback (max_abs may have been raised)
_MAX_BULK_INTERVAL = 1e12
_MIN_ROW = 16  # rows are at least this long: short items share one matrix
_CELLS = 1 << 20  # readings cells per chunk (bounds the memory of one pass)
_BROADCAST_MAX = 32  # rows up to this long are searched in one step, longer ones in two

_EMPTY = np.zeros(0)
_EMPTY.setflags(write=False)


@dataclass
class QuantityItem:
    """One call of :func:`window_quantities`: its arguments, by the same names."""

    reading: ReadingType
    ts: FloatArray
    value: FloatArray
    windows: Windows
    interval: float | None = None
    now: datetime | None = None
    max_gap: float | None = None
    gap_factor: float = GAP_FACTOR
    reset_tolerance: float = RESET_TOLERANCE
    max_abs: float = MAX_ABS_VALUE

    def compute(self) -> WindowQuantities:
        """``window_quantities`` of this item alone (the reference, and the fallback)."""
        return window_quantities(
            self.reading,
            self.ts,
            self.value,
            self.windows,
            interval=self.interval,
            now=self.now,
            gap_factor=self.gap_factor,
            reset_tolerance=self.reset_tolerance,
            max_gap=self.max_gap,
            max_abs=self.max_abs,
        )


@dataclass
class ManyOutcome:
    """The results in item order, and which items the bulk path computed (the others went
    through :meth:`QuantityItem.compute`)."""

    results: list[WindowQuantities | BaseException]
    bulk: BoolArray = field(repr=False)


def window_quantities_many(
    items: Sequence[QuantityItem], *, return_exceptions: bool = False
) -> list[WindowQuantities | BaseException]:
    """Same results as ``[it.compute() for it in items]``; with ``return_exceptions=True`` an
    item whose computation raises gets the exception in its place (others unaffected);
    otherwise the first exception is raised."""
    return window_quantities_many_outcome(items, return_exceptions=return_exceptions).results


def window_quantities_many_outcome(
    items: Sequence[QuantityItem], *, return_exceptions: bool = False
) -> ManyOutcome:
    """:func:`window_quantities_many`, with the items the bulk path took."""
    batch = _Batch(items)
    results: list[WindowQuantities | BaseException | None] = [None] * len(items)
    for i in np.flatnonzero(~batch.bulk).tolist():
        try:
            results[i] = items[i].compute()
        except Exception as exc:
            if not return_exceptions:
                raise
            results[i] = exc
    batch.compute(results)
    done: list[WindowQuantities | BaseException] = []
    for r in results:
        assert r is not None
        done.append(r)
    return ManyOutcome(done, batch.bulk)


class _NotBulk(Exception):
    """An item the bulk path leaves to :meth:`QuantityItem.compute`."""


def _floats(x: object) -> FloatArray:
    if type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1:
        return x
    out: FloatArray = np.asarray(x, dtype=np.float64).ravel()
    return out


def _edges(windows: Windows) -> tuple[FloatArray, FloatArray]:
    """Starts and ends as ``window_edges`` reads them (its checks are made on the batch)."""
    if isinstance(windows, np.ndarray):
        arr = np.asarray(windows, dtype=np.float64)
        if arr.size == 0:
            return _EMPTY, _EMPTY
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise _NotBulk
        return arr[:, 0], arr[:, 1]
    starts = np.array([_epoch(s) for s, _ in windows], dtype=np.float64)
    ends = np.array([_epoch(e) for _, e in windows], dtype=np.float64)
    return starts, ends


def _owner(offsets: IntArray, at: IntArray) -> IntArray:
    """The item of each flat position ``at`` (``offsets``: where each item starts, and the end)."""
    out: IntArray = np.searchsorted(offsets, at, side="right") - 1
    return out


def _ranges(starts: IntArray, counts: IntArray) -> IntArray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``."""
    ends = np.cumsum(counts)
    out: IntArray = np.repeat(starts - ends + counts, counts) + np.arange(
        int(ends[-1]) if ends.size else 0, dtype=np.int64
    )
    return out


def _row_lengths(n: IntArray) -> IntArray:
    """The padded row length of items of ``n`` readings: at least ``_MIN_ROW``, then four
    lengths per octave."""
    length = np.maximum(n, _MIN_ROW)
    step = np.left_shift(1, np.floor(np.log2(length - 1)).astype(np.int64) - 2)
    out: IntArray = -(-length // step) * step
    return out


def _params(it: QuantityItem, kind: int, n: int) -> tuple[float, float, float, float]:
    """(interval, gap_factor, max_gap or inf, now or nan) of an item the bulk path can take;
    raises _NotBulk for one it leaves to the fallback."""
    if kind == _DELTA:
        if it.now is None:
            return math.nan, math.nan, math.inf, math.nan
        now = _epoch(it.now)
        if not math.isfinite(now):
            raise _NotBulk
        return math.nan, math.nan, math.inf, now
    if it.interval is None or n < 2:
        raise _NotBulk
    interval = float(it.interval)
    gap_factor = float(it.gap_factor)
    max_gap = math.inf if it.max_gap is None else float(it.max_gap)
    if not (0.0 < interval <= _MAX_BULK_INTERVAL and 1.0 <= gap_factor < math.inf):
        raise _NotBulk
    if not max_gap > 0.0:
        raise _NotBulk
    if kind == _TOTAL and not float(it.reset_tolerance) >= 0.0:
        raise _NotBulk
    return interval, gap_factor, max_gap, math.nan


def _interp(
    x: FloatArray, below: IntArray, base: IntArray, n: IntArray, xp: FloatArray, fp: FloatArray
) -> FloatArray:
    """``np.interp(x, xp_row, fp_row)`` per window, the row's ``n ≥ 2`` knots (strictly
    increasing) starting at ``base`` of the flat ``xp``/``fp``, ``below`` the number of them
    ``<= x``: numpy's arithmetic (``slope·(x − x_j) + y_j``, the knot's own value on a knot,
    the end values outside)."""
    j = below - 1
    jj = np.clip(j, 0, n - 2)
    b = base + jj
    x0 = xp[b]
    y0 = fp[b]
    with np.errstate(divide="ignore", invalid="ignore"):  # only where the knots are left unused
        slope = (fp[b + 1] - y0) / (xp[b + 1] - x0)
        val = slope * (x - x0) + y0
    out: FloatArray = np.where(
        j < 0, fp[base], np.where(j >= n - 1, fp[base + n - 1], np.where(x0 == x, y0, val))
    )
    return out


def _cumsum_rows(a: FloatArray) -> FloatArray:
    """``concatenate(([0.0], cumsum(row)))`` of every row (added in the row's order)."""
    out = np.zeros((a.shape[0], a.shape[1] + 1))
    np.cumsum(a, axis=1, out=out[:, 1:])
    return out


def _count_rows(flags: BoolArray) -> IntArray:
    """``concatenate(([0], cumsum(row)))`` of every row of flags."""
    out = np.zeros((flags.shape[0], flags.shape[1] + 1), dtype=np.int64)
    np.cumsum(flags, axis=1, dtype=np.int64, out=out[:, 1:])
    return out


class _Rows:
    """A chunk of items of one reading type, each a row of ``width`` padded readings (the last
    one repeated), and their windows (``wrow``: the row of each, ``wi``: its index in the
    batch)."""

    def __init__(self, batch: _Batch, rows: IntArray, width: int) -> None:
        self.rows = rows
        self.r = rows.size
        self.width = width
        n = batch.n[rows]
        self.n = n
        col = np.arange(width, dtype=np.int64)
        idx = batch.roff[rows][:, None] + np.minimum(col[None, :], np.maximum(n - 1, 0)[:, None])
        idx[n == 0] = batch.tflat.size - 1  # the sentinel reading (0.0, 0.0)
        self.t: FloatArray = batch.tflat[idx]
        self.v: FloatArray = batch.vflat[idx]
        m = batch.m[rows]
        self.wi = _ranges(batch.woff[rows], m)
        self.wrow = np.repeat(np.arange(self.r, dtype=np.int64), m)
        self.s: FloatArray = batch.sflat[self.wi]
        self.e: FloatArray = batch.eflat[self.wi]
        self.nw = n[self.wrow]
        self.base = self.wrow * width

    def below(self, grid: FloatArray, x: FloatArray, n: IntArray, *, equal: bool) -> IntArray:
        """Per window: how many of its row's first ``n`` entries of ``grid`` (rows sorted,
        padded with their last entry) are ``< x`` (``<= x`` when ``equal``): the row's
        ``searchsorted(..., side="left")`` (``"right"``).  A long row is searched in two steps:
        the last entry of every block of ``√width`` first, then the block that holds ``x``."""
        width = grid.shape[1]
        if width <= _BROADCAST_MAX:
            g = grid[self.wrow]
            found: IntArray = np.count_nonzero(g <= x[:, None] if equal else g < x[:, None], axis=1)
        else:
            block = 1 << ((math.isqrt(width - 1) + 1).bit_length() - 1)
            g = grid[:, block - 1 :: block][self.wrow]
            whole = np.count_nonzero(g <= x[:, None] if equal else g < x[:, None], axis=1)
            cols = (whole * block)[:, None] + np.arange(block)
            inside = cols < width
            g = grid.ravel()[(self.wrow * width)[:, None] + np.minimum(cols, width - 1)]
            hit = (g <= x[:, None]) if equal else (g < x[:, None])
            found = whole * block + np.count_nonzero(hit & inside, axis=1)
        out: IntArray = np.minimum(found, n)
        return out

    def counts(self, flags: BoolArray, i0: IntArray, i1: IntArray) -> IntArray:
        if not flags.any():
            return np.zeros(self.wi.size, dtype=np.int64)
        cum = _count_rows(flags).ravel()
        b = self.wrow * (self.width + 1)
        out: IntArray = cum[b + i1] - cum[b + i0]
        return out


class _Batch:
    """The items side by side: readings and windows concatenated, what each needs."""

    def __init__(self, items: Sequence[QuantityItem]) -> None:
        count = len(items)
        kinds: list[int] = []
        ts: list[FloatArray] = []
        values: list[FloatArray] = []
        starts: list[FloatArray] = []
        ends: list[FloatArray] = []
        params: list[tuple[float, float, float, float]] = []
        max_abs: list[float] = []
        nan4 = (math.nan, math.nan, math.nan, math.nan)
        for it in items:
            try:
                kind = _KIND[it.reading]  # a StrEnum: its value finds it too
                t = _floats(it.ts)
                v = _floats(it.value)
                if t.shape != v.shape:
                    raise _NotBulk
                s, e = _edges(it.windows)
                p = _params(it, kind, t.size)
                ma = float(it.max_abs)
            except Exception:
                kind, t, v, s, e, p, ma = -1, _EMPTY, _EMPTY, _EMPTY, _EMPTY, nan4, math.nan
            kinds.append(kind)
            ts.append(t)
            values.append(v)
            starts.append(s)
            ends.append(e)
            params.append(p)
            max_abs.append(ma)
        sentinel = np.zeros(1)
        self.kind = np.array(kinds, dtype=np.int64)
        self.n = np.array([t.size for t in ts], dtype=np.int64)
        self.m = np.array([s.size for s in starts], dtype=np.int64)
        self.roff = np.concatenate(([0], np.cumsum(self.n)))
        self.woff = np.concatenate(([0], np.cumsum(self.m)))
        self.tflat: FloatArray = np.concatenate([*ts, sentinel])
        self.vflat: FloatArray = np.concatenate([*values, sentinel])
        self.sflat: FloatArray = np.concatenate([*starts, _EMPTY])
        self.eflat: FloatArray = np.concatenate([*ends, _EMPTY])
        par = np.array(params, dtype=np.float64).reshape(count, 4)
        self.interval = par[:, 0]
        self.gap_factor = par[:, 1]
        max_gap = par[:, 2]
        self.now = par[:, 3]
        self.bulk: BoolArray = (self.kind >= 0) & ~self._unfit(
            np.array(max_abs, dtype=np.float64), max_gap
        )

    def _unfit(self, max_abs: FloatArray, max_gap: FloatArray) -> BoolArray:
        """Per item: something in its readings or windows the bulk path leaves out."""
        kind = self.kind
        bad = np.zeros(kind.size, dtype=bool)
        roff, woff = self.roff, self.woff
        t, v = self.tflat[:-1], self.vflat[:-1]
        with np.errstate(invalid="ignore", over="ignore"):
            # Every reading valid, at a finite time (non-finite fails the comparison too).
            limit = np.minimum(max_abs, _MAX_BULK_V)
            if limit.size and (limit == limit[0]).all():
                ok = np.abs(v) <= limit[0]
            else:
                ok = np.abs(v) <= np.repeat(limit, self.n)
            ok &= np.abs(t) <= _MAX_BULK_T
            bad[_owner(roff, np.flatnonzero(~ok))] = True
            # Between consecutive readings of an item (step k: readings k and k + 1).
            inner = np.ones(max(t.size - 1, 0), dtype=bool)
            edges = roff[1:-1] - 1
            inner[edges[(edges >= 0) & (edges < inner.size)]] = False
            dt = np.diff(t)
            steps = np.flatnonzero(inner & ~(dt > 0))
            owner = _owner(roff, steps)
            # Unsorted for every type; a repeated time only for total and rate (np.interp).
            bad[owner[(kind[owner] != _DELTA) | ~(dt[steps] >= 0)]] = True
            if (kind == _TOTAL).any():
                owner = _owner(roff, np.flatnonzero(inner & ~(np.diff(v) >= 0)))
                bad[owner[kind[owner] == _TOTAL]] = True
            if np.isfinite(max_gap[kind != _DELTA]).any():  # breaks
                gap = np.where(kind == _DELTA, np.inf, max_gap)
                bad[_owner(roff, np.flatnonzero(inner & (dt > np.repeat(gap, self.n)[:-1])))] = True
            s, e = self.sflat, self.eflat
            bad[_owner(woff, np.flatnonzero(~(np.isfinite(s) & np.isfinite(e) & (e > s))))] = True
        return bad

    # ------------------------------------------------------------------------- compute

    def compute(self, results: list[WindowQuantities | BaseException | None]) -> None:
        """Fills in the results of the bulk items."""
        size = self.sflat.size
        self.quantity = np.full(size, np.nan)
        self.coverage = np.zeros(size)
        self.readings = np.zeros(size, dtype=np.int64)
        self.first_ts = np.full(size, np.nan)
        self.last_ts = np.full(size, np.nan)
        self.stuck = np.zeros(size, dtype=bool)
        self.negatives = np.zeros(size, dtype=np.int64)
        self.outliers = np.zeros(size, dtype=np.int64)
        zeros = np.zeros(size, dtype=np.int64)
        invalid = np.zeros(size, dtype=np.int64)
        for kind, run in ((_TOTAL, self._total), (_RATE, self._rate), (_DELTA, self._delta)):
            rows = np.flatnonzero(self.bulk & (self.kind == kind))
            if rows.size == 0:
                continue
            widths = _row_lengths(self.n[rows])
            for width in np.unique(widths).tolist():
                chosen = rows[widths == width]
                per = max(1, _CELLS // width)
                for at in range(0, chosen.size, per):
                    run(_Rows(self, chosen[at : at + per], width))
        no_resets = Resets.none()
        woff = self.woff.tolist()
        for i in np.flatnonzero(self.bulk).tolist():
            a, b = woff[i], woff[i + 1]
            results[i] = WindowQuantities(
                self.sflat[a:b],
                self.eflat[a:b],
                self.quantity[a:b],
                self.coverage[a:b],
                self.readings[a:b],
                self.first_ts[a:b],
                self.last_ts[a:b],
                self.stuck[a:b],
                self.negatives[a:b],
                zeros[a:b],
                self.outliers[a:b],
                no_resets,
                invalid[a:b],
            )

    def _slices(self, c: _Rows, v: FloatArray) -> tuple[IntArray, IntArray, IntArray]:
        """Each window's readings ``i0 ≤ i < i1`` (``start ≤ ts < end``) in its row, with
        ``readings``, ``first_ts``, ``last_ts`` and ``stuck`` (judged on ``v``) stored."""
        i0 = c.below(c.t, c.s, c.nw, equal=False)
        i1 = c.below(c.t, c.e, c.nw, equal=False)
        count = i1 - i0
        tf = c.t.ravel()
        has = count > 0
        self.readings[c.wi] = count
        self.first_ts[c.wi] = np.where(has, tf[c.base + np.minimum(i0, c.width - 1)], np.nan)
        self.last_ts[c.wi] = np.where(has, tf[c.base + np.maximum(i1 - 1, 0)], np.nan)
        changes = _count_rows(v[:, 1:] != v[:, :-1]).ravel()
        many = count >= 2
        last = np.where(many, i1 - 1, 0)
        first = np.where(many, i0, 0)
        self.stuck[c.wi] = many & (changes[c.base + last] == changes[c.base + first])
        return i0, i1, count

    def _right(self, c: _Rows, x: FloatArray, left: IntArray) -> IntArray:
        """``searchsorted(..., side="right")`` from the left one (times strictly increasing)."""
        at = c.t.ravel()[c.base + np.minimum(left, c.width - 1)]
        out: IntArray = left + ((left < c.nw) & (at == x))
        return out

    def _store(self, c: _Rows, quantity: FloatArray) -> None:
        """``quantity`` and the coverage of ``total``/``rate`` windows, both blank where there is
        no data (``_blank_no_data``)."""
        tf = c.t.ravel()
        none = (c.e <= tf[c.base]) | (c.s >= tf[c.base + c.nw - 1])
        quantity[none] = np.nan
        cov = self._coverage(c)
        cov[none] = 0.0
        self.quantity[c.wi] = quantity
        self.coverage[c.wi] = cov

    def _coverage(self, c: _Rows) -> FloatArray:
        """``rules.quantities.coverage`` of every window: the covered length as knots per row
        (``x0``, the holes' ends, the last reading's half interval), interpolated."""
        t, r = c.t, c.r
        interval = self.interval[c.rows]
        h = interval / 2.0
        hole = np.diff(t, axis=1) > (self.gap_factor[c.rows] * interval)[:, None]
        ar = np.arange(r)
        x0 = t[:, 0] - h
        last = t[ar, c.n - 1] + h
        holes = hole.sum(axis=1)
        most = int(holes.max()) if r else 0
        knots = np.empty((r, 2 * most + 2))
        covered = np.empty((r, 2 * most + 2))
        knots[:] = last[:, None]
        knots[:, 0] = x0
        if most == 0:
            covered[:] = (last - x0 - 0.0)[:, None]
        else:
            hr, hc = np.nonzero(hole)
            rank = np.arange(hr.size) - np.repeat(np.cumsum(holes) - holes, holes)
            hs = t[hr, hc] + h[hr]
            he = t[hr, hc + 1] - h[hr]
            lengths = np.zeros((r, most))
            lengths[hr, rank] = he - hs
            lost = np.cumsum(lengths, axis=1)
            lost_before = np.zeros((r, most))
            lost_before[:, 1:] = lost[:, :-1]
            inner = hs - x0[hr] - lost_before[hr, rank]
            lost_all = np.where(holes > 0, lost[ar, np.maximum(holes - 1, 0)], 0.0)
            covered[:] = (last - x0 - lost_all)[:, None]
            knots[hr, 1 + 2 * rank] = hs
            knots[hr, 2 + 2 * rank] = he
            covered[hr, 1 + 2 * rank] = inner
            covered[hr, 2 + 2 * rank] = inner
        covered[:, 0] = 0.0
        nk = (2 * holes + 2)[c.wrow]
        kbase = c.wrow * knots.shape[1]
        kf, cf = knots.ravel(), covered.ravel()
        at_end = _interp(c.e, c.below(knots, c.e, nk, equal=True), kbase, nk, kf, cf)
        at_start = _interp(c.s, c.below(knots, c.s, nk, equal=True), kbase, nk, kf, cf)
        frac: FloatArray = (at_end - at_start) / (c.e - c.s)
        frac[frac > 1.0 - 1e-9] = 1.0
        frac[frac < 1e-9] = 0.0
        return frac

    def _total(self, c: _Rows) -> None:
        i0, i1, _ = self._slices(c, c.v)
        # No drop in these registers: the increments are the differences, no reset, outlier
        # or jitter (each window's negatives, resets and outliers stay 0).
        cum = _cumsum_rows(np.diff(c.v, axis=1)).ravel()
        tf = c.t.ravel()
        at_end = _interp(c.e, self._right(c, c.e, i1), c.base, c.nw, tf, cum)
        at_start = _interp(c.s, self._right(c, c.s, i0), c.base, c.nw, tf, cum)
        self._store(c, at_end - at_start)

    def _rate(self, c: _Rows) -> None:
        v = c.v
        prev, mid, nxt = v[:, :-2], v[:, 1:-1], v[:, 2:]
        lo = np.minimum(prev, nxt)
        hi = np.maximum(prev, nxt)
        steady = (lo > 0) & (hi <= SPIKE_FACTOR * lo)
        flagged = steady & ((mid > SPIKE_FACTOR * hi) | (mid * SPIKE_FACTOR < lo))
        flagged &= np.arange(1, c.width - 1)[None, :] < (c.n - 1)[:, None]
        flagged[:, 1:] &= ~flagged[:, :-1]
        spikes = np.zeros((c.r, c.width), dtype=bool)
        spikes[:, 1:-1] = flagged
        if flagged.any():
            v = v.copy()
            rr, cc = np.nonzero(spikes)
            v[rr, cc] = 0.5 * (v[rr, cc - 1] + v[rr, cc + 1])
        i0, i1, _ = self._slices(c, v)
        dt = np.diff(c.t, axis=1)
        area = (v[:, :-1] + v[:, 1:]) * 0.5 * dt
        cum = _cumsum_rows(area).ravel()
        tf, vf = c.t.ravel(), v.ravel()

        def integral(at: FloatArray, right: IntArray) -> FloatArray:
            k = np.clip(right - 1, 0, c.nw - 2)
            b = c.base + k
            width = tf[b + 1] - tf[b]
            tau = np.clip(at - tf[b], 0.0, width)
            slope = (vf[b + 1] - vf[b]) / width
            out: FloatArray = (cum[b] + vf[b] * tau + 0.5 * slope * tau * tau) / 3600.0
            return out

        q = integral(c.e, self._right(c, c.e, i1)) - integral(c.s, self._right(c, c.s, i0))
        self._store(c, q)
        self.negatives[c.wi] = c.counts(v < 0, i0, i1)
        self.outliers[c.wi] = c.counts(spikes, i0, i1)

    def _delta(self, c: _Rows) -> None:
        i0, i1, count = self._slices(c, c.v)
        cum = _cumsum_rows(c.v).ravel()
        b = c.wrow * (c.width + 1)
        q = cum[b + i1] - cum[b + i0]
        now = self.now[c.rows][c.wrow]
        timed = ~np.isnan(now)
        cov = np.ones(c.wi.size)
        if timed.any():
            s, e = c.s[timed], c.e[timed]
            cov[timed] = np.clip((now[timed] - s) / (e - s), 0.0, 1.0)
            q[timed & (cov <= 0.0) & (count == 0)] = np.nan
        self.quantity[c.wi] = q
        self.coverage[c.wi] = cov
        self.negatives[c.wi] = c.counts(c.v < 0, i0, i1)
