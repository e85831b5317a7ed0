"""window_quantities_many: bit for bit what window_quantities gives, item by item."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import rules.quantities_many as qm
from core.network import ReadingType
from rules.quantities import MAX_ABS_VALUE, WindowQuantities, window_quantities
from rules.quantities_many import (
    QuantityItem,
    window_quantities_many,
    window_quantities_many_outcome,
)

FIELDS = (
    "start",
    "end",
    "quantity",
    "coverage",
    "readings",
    "first_ts",
    "last_ts",
    "stuck",
    "negatives",
    "resets",
    "outliers",
    "invalid",
)
T0 = 1_790_000_000.0 - 1_790_000_000.0 % 3600.0


def assert_same(got: WindowQuantities | BaseException, want: WindowQuantities) -> None:
    assert isinstance(got, WindowQuantities), got
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        # bit for bit: equal floats and nan in the same places (and the same sign of zero)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (name, a, b)
        if a.dtype.kind == "f":
            assert np.array_equal(np.signbit(a), np.signbit(b)), name
    for name in ("index", "ts", "before", "after"):
        a, b = getattr(got.reset_events, name), getattr(want.reset_events, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def reference(item: QuantityItem) -> WindowQuantities | BaseException:
    try:
        return window_quantities(
            item.reading,
            item.ts,
            item.value,
            item.windows,
            interval=item.interval,
            now=item.now,
            gap_factor=item.gap_factor,
            reset_tolerance=item.reset_tolerance,
            max_gap=item.max_gap,
            max_abs=item.max_abs,
        )
    except Exception as exc:
        return exc


def check(items: list[QuantityItem]) -> np.ndarray:
    """Every result equal to window_quantities' (or the same exception); the bulk mask."""
    outcome = window_quantities_many_outcome(items, return_exceptions=True)
    assert len(outcome.results) == len(items)
    for i, (item, got) in enumerate(zip(items, outcome.results, strict=True)):
        want = reference(item)
        if isinstance(want, BaseException):
            assert type(got) is type(want) and str(got) == str(want), (i, got, want)
            assert not outcome.bulk[i]
        else:
            try:
                assert_same(got, want)
            except AssertionError as exc:
                raise AssertionError(f"item {i}: {item!r}") from exc
    return outcome.bulk


def dt(x: float) -> datetime:
    return datetime.fromtimestamp(x, UTC)


# ------------------------------------------------------------------------- random items


def random_times(rng: np.random.Generator, n: int, interval: float) -> np.ndarray:
    steps = interval * rng.uniform(0.8, 1.2, n)
    holes = rng.random(n) < rng.choice([0.0, 0.05, 0.3])
    steps[holes] *= rng.uniform(1.6, 12.0, int(holes.sum()))
    if rng.random() < 0.05 and n > 2:
        steps[rng.integers(1, n)] = 0.0  # a repeated time
    if rng.random() < 0.03 and n > 2:
        steps[rng.integers(1, n)] = -interval  # unsorted
    ts = T0 + rng.uniform(-7200.0, 3600.0) + np.cumsum(steps)
    if rng.random() < 0.5:
        ts = np.round(ts)  # whole seconds, as on the edges
    return np.asarray(ts)


def random_values(rng: np.random.Generator, kind: ReadingType, n: int) -> np.ndarray:
    if kind == ReadingType.total:
        inc = rng.lognormal(0.0, 2.0, n) * (rng.random(n) < rng.choice([1.0, 0.7, 0.2]))
        # from zero up: the differences are not all exact, so the order of the sums shows
        v = float(rng.choice([0.0, rng.uniform(0.0, 10.0), rng.uniform(0.0, 1e6)])) + np.cumsum(inc)
        if n > 3:
            for _ in range(int(rng.integers(0, 2))):
                k = int(rng.integers(1, n))
                what = rng.integers(0, 3)
                if what == 0:  # counter reset: the register starts again near 0
                    v[k:] = v[k:] - v[k] + rng.uniform(0.0, 5.0)
                elif what == 1:  # a spiked reading
                    v[k] += rng.choice([-1.0, 1.0]) * rng.uniform(10.0, 1e4)
                else:  # a jitter drop within the tolerance
                    v[k:] -= 1e-12 * abs(v[k])
    elif kind == ReadingType.rate:
        if rng.random() < 0.5:
            v = rng.uniform(-1.0, 5.0, n)
        else:
            v = 3.0 + np.cumsum(rng.normal(0.0, 0.05, n))
            if n > 3 and rng.random() < 0.5:  # a spike above or below its neighbours
                v[rng.integers(1, n - 1)] *= rng.choice([0.1, 10.0])
    else:
        v = rng.normal(1.0, 2.0, n)
        v[rng.random(n) < 0.2] = 0.0
    if n > 2 and rng.random() < 0.3:  # a run of equal readings
        k = int(rng.integers(0, n - 1))
        v[k : k + int(rng.integers(2, 12))] = v[k]
    if n and rng.random() < 0.06:
        v[rng.integers(0, n)] = rng.choice([np.nan, np.inf, -np.inf, 2.0 * MAX_ABS_VALUE])
    return np.asarray(v)


def random_windows(rng: np.random.Generator, ts: np.ndarray) -> Any:
    m = int(rng.choice([0, 1, 1, 2, 3, 3, 4, 6]))
    length = float(rng.choice([900.0, 3600.0, rng.uniform(100.0, 5000.0)]))
    centre = float(np.median(ts)) if ts.size and np.isfinite(ts).all() else T0
    first = (centre - rng.uniform(0.0, 1.5) * m * length) // 60.0 * 60.0
    if rng.random() < 0.7:  # contiguous
        starts = first + length * np.arange(m)
        ends = starts + length
    else:  # anywhere, any order, overlapping
        starts = first + rng.uniform(-2.0, 2.0, m) * length
        ends = starts + rng.uniform(1.0, 2.0 * length, m)
    if m and rng.random() < 0.02:
        ends[0] = starts[0]  # an empty window: window_edges rejects it
    if rng.random() < 0.5:
        return np.column_stack([starts, ends])
    return [(dt(s), dt(e)) for s, e in zip(starts, ends, strict=True)]


def random_item(rng: np.random.Generator) -> QuantityItem:
    kind = ReadingType(str(rng.choice(["total", "rate", "delta"])))
    interval = float(rng.choice([60.0, 60.0, 300.0, 900.0, 1e-6, 1e-7]))
    n = int(
        rng.choice(
            [
                0,
                1,
                2,
                3,
                rng.integers(4, 13),
                rng.integers(4, 13),
                rng.integers(13, 80),
                rng.integers(80, 400),
            ]
        )
    )
    step = interval if interval >= 1.0 else 60.0
    ts = random_times(rng, n, step)
    if n and rng.random() < 0.03:
        ts[rng.integers(0, n)] = rng.choice([np.nan, np.inf])
    value = random_values(rng, kind, n)
    windows = random_windows(rng, ts)
    now = None
    if rng.random() < 0.6:
        lo = ts[0] if n and np.isfinite(ts[0]) else T0
        now = dt(lo + rng.uniform(-3600.0, 4 * 3600.0))
    return QuantityItem(
        kind,
        ts,
        value,
        windows,
        interval=interval if rng.random() > 0.02 else None,
        now=now,
        max_gap=None if rng.random() < 0.6 else float(rng.choice([3.0, 10.0, 50.0])) * step,
        gap_factor=float(rng.choice([1.5, 1.5, 1.0, 3.0])),
        max_abs=MAX_ABS_VALUE if rng.random() < 0.9 else 50.0,
    )


@pytest.mark.parametrize("seed", range(8))
def test_random_items_equal_window_quantities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = [random_item(rng) for _ in range(400)]
    bulk = check(items)
    # the mixture is built to exercise both paths
    assert 0.3 < bulk.mean() < 0.95


def test_every_kind_of_case_goes_through_the_bulk_and_the_fallback() -> None:
    rng = np.random.default_rng(99)
    items = [random_item(rng) for _ in range(3000)]
    bulk = check(items)
    for kind in ReadingType:
        mine = np.array([it.reading == kind for it in items])
        assert bulk[mine].any() and (~bulk[mine]).any(), kind
    # the bulk path handles holes in the coverage and rate spikes itself
    holes = [
        i
        for i, it in enumerate(items)
        if it.reading != ReadingType.delta
        and it.interval is not None
        and it.ts.size > 1
        and (np.diff(it.ts) > it.gap_factor * it.interval).any()
    ]
    assert bulk[holes].any()
    results = window_quantities_many(items, return_exceptions=True)
    spiked = [
        i
        for i, (it, q) in enumerate(zip(items, results, strict=True))
        if it.reading == ReadingType.rate and isinstance(q, WindowQuantities) and q.outliers.any()
    ]
    assert bulk[spiked].any()


def test_results_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(5)
    items = [random_item(rng) for _ in range(300)]
    together = window_quantities_many(items, return_exceptions=True)
    order = rng.permutation(len(items))
    shuffled = window_quantities_many([items[i] for i in order], return_exceptions=True)
    for k, i in enumerate(order.tolist()):
        want = together[i]
        if isinstance(want, WindowQuantities):
            assert_same(shuffled[k], want)
        else:
            assert type(shuffled[k]) is type(want)
    for i in range(0, len(items), 37):
        alone = window_quantities_many([items[i]], return_exceptions=True)[0]
        if isinstance(together[i], WindowQuantities):
            assert isinstance(together[i], WindowQuantities)
            assert_same(alone, together[i])  # type: ignore[arg-type]


def test_long_items_and_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of thousands of readings (the two-step search), a month of hourly windows, and
    batches cut into many chunks."""
    rng = np.random.default_rng(11)
    items = []
    for k in range(12):
        kind = list(ReadingType)[k % 3]
        n = int(rng.integers(500, 6000))
        ts = T0 + np.cumsum(rng.uniform(50.0, 70.0, n))
        if k % 2:
            ts[n // 3 :] += 900.0  # a hole
        value = (
            1e4 + np.cumsum(rng.uniform(0.0, 1.0, n))
            if kind == ReadingType.total
            else rng.uniform(0.1, 3.0, n)
        )
        m = int((ts[-1] - ts[0]) // 3600.0)
        windows = np.column_stack(
            [T0 + 3600.0 * np.arange(m + 2), T0 + 3600.0 * np.arange(1, m + 3)]
        )
        items.append(QuantityItem(kind, ts, value, windows, interval=60.0, now=dt(ts[n // 2])))
    items += [random_item(rng) for _ in range(200)]
    assert check(items)[:12].all()
    monkeypatch.setattr(qm, "_CELLS", 64)
    assert check(items)[:12].all()
    monkeypatch.setattr(qm, "_BROADCAST_MAX", 0)  # every row searched in two steps
    assert check(items)[:12].all()


def test_values_on_edges_and_exact_times() -> None:
    """Readings exactly on window edges, windows starting or ending on the first or last
    reading, windows outside the readings, whole seconds."""
    items = []
    for kind in ReadingType:
        ts = T0 + 60.0 * np.arange(10)
        value = 100.0 + np.arange(10.0) ** 1.5 if kind != ReadingType.delta else np.ones(10)
        edges = [
            (ts[0], ts[-1]),
            (ts[0] - 60.0, ts[0]),
            (ts[-1], ts[-1] + 60.0),
            (ts[3], ts[3] + 1.0),
            (ts[3] - 1.0, ts[3]),
            (ts[0] - 3600.0, ts[0] - 1800.0),
            (ts[-1] + 1800.0, ts[-1] + 3600.0),
            (ts[2] + 30.0, ts[7] + 30.0),
        ]
        for now in (None, dt(ts[3]), dt(ts[0] - 10_000.0)):
            items.append(QuantityItem(kind, ts, value, np.array(edges), 60.0, now))
            items.append(QuantityItem(kind, ts, value, [(dt(a), dt(b)) for a, b in edges], 60.0))
    assert check(items).all()


def test_typical_items_all_go_through_the_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    items = []
    for i in range(300):
        kind = list(ReadingType)[i % 3]
        start = T0 + 3600.0 * int(rng.integers(0, 48))
        ts = np.arange(start - 120.0 + rng.uniform(0.0, 60.0), start + 3 * 3600.0 + 120.0, 60.0)
        if i % 2:  # a few readings around a 15-minute edge
            ts = ts[:5]
        value = (
            1e3 + np.cumsum(rng.uniform(0.0, 1.0, ts.size))
            if kind == ReadingType.total
            else rng.uniform(0.0, 2.0, ts.size)
        )
        windows = [(dt(start + 3600.0 * k), dt(start + 3600.0 * (k + 1))) for k in range(3)]
        items.append(QuantityItem(kind, ts, value, windows, 60.0, dt(start + 9000.0)))
    broken = QuantityItem(
        ReadingType.total,
        T0 + 60.0 * np.arange(6),
        np.array([10.0, 11.0, 12.0, 0.5, 1.5, 2.5]),  # a counter reset
        np.array([[T0, T0 + 3600.0]]),
        60.0,
    )
    items.insert(7, broken)
    calls: list[QuantityItem] = []
    compute = QuantityItem.compute

    def counted(self: QuantityItem) -> WindowQuantities:
        calls.append(self)
        return compute(self)

    monkeypatch.setattr(QuantityItem, "compute", counted)
    outcome = window_quantities_many_outcome(items)
    assert calls == [broken]  # only the reset went one by one
    assert outcome.bulk.sum() == len(items) - 1 and not outcome.bulk[7]
    result = outcome.results[7]
    assert isinstance(result, WindowQuantities) and result.resets.tolist() == [1]
    calls.clear()
    for item, got in zip(items, outcome.results, strict=True):
        assert_same(got, compute(item))


@pytest.mark.parametrize(
    "change",
    [
        {"value": np.array([1.0, 2.0, np.nan, 4.0])},
        {"value": np.array([1.0, 2.0, 1.5, 4.0])},  # an outlier
        {"value": np.array([5.0, 6.0, 0.1, 0.2])},  # a reset
        {"ts": T0 + np.array([0.0, 60.0, 60.0, 120.0])},
        {"ts": T0 + np.array([0.0, 60.0, 4000.0, 4060.0]), "max_gap": 600.0},
        {"ts": T0 + np.array([0.0, 60.0, np.inf, 4060.0])},
        {"max_abs": 3.0},
        {"interval": None},
        {"interval": -60.0},
        {"max_gap": 0.0},
        {"gap_factor": 0.5},
        {"reset_tolerance": -1.0},
    ],
)
def test_rare_cases_go_one_by_one(change: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "reading": ReadingType.total,
        "ts": T0 + 60.0 * np.arange(4),
        "value": np.array([1.0, 2.0, 3.0, 4.0]),
        "windows": np.array([[T0, T0 + 120.0], [T0 + 120.0, T0 + 240.0]]),
        "interval": 60.0,
    }
    fields.update(change)
    plain = QuantityItem(
        ReadingType.total, T0 + 60.0 * np.arange(4), np.arange(4.0), fields["windows"], 60.0
    )
    bulk = check([plain, QuantityItem(**fields), plain])
    assert bulk.tolist() == [True, False, True]


# --------------------------------------------------------------------------- exceptions


def test_return_exceptions_isolates_a_failing_item() -> None:
    good = QuantityItem(
        ReadingType.rate, T0 + 60.0 * np.arange(5), np.ones(5), np.array([[T0, T0 + 300.0]]), 60.0
    )
    no_interval = QuantityItem(ReadingType.total, good.ts, np.arange(5.0), good.windows)
    reversed_window = QuantityItem(
        ReadingType.delta, good.ts, np.ones(5), np.array([[T0 + 300.0, T0]])
    )
    naive = QuantityItem(
        ReadingType.delta, good.ts, np.ones(5), [(datetime(2026, 1, 1), datetime(2026, 1, 2))]
    )
    items = [good, no_interval, good, reversed_window, naive, good]
    results = window_quantities_many(items, return_exceptions=True)
    for i in (0, 2, 5):
        assert_same(results[i], good.compute())
    for i in (1, 3, 4):
        got = results[i]
        assert isinstance(got, ValueError)
        with pytest.raises(ValueError) as want:
            items[i].compute()
        assert str(got) == str(want.value)
    assert "needs its interval" in str(results[1])
    with pytest.raises(ValueError, match="needs its interval"):
        window_quantities_many(items)
    with pytest.raises(ValueError, match="ends"):
        window_quantities_many([good, reversed_window, naive])


def test_empty_batch_and_empty_items() -> None:
    assert window_quantities_many([]) == []
    empty = QuantityItem(ReadingType.delta, np.zeros(0), np.zeros(0), np.zeros((0, 2)))
    check([empty, QuantityItem(ReadingType.delta, np.zeros(0), np.zeros(0), [])])
    lone = QuantityItem(ReadingType.delta, np.array([T0]), np.array([2.0]), [(dt(T0), dt(T0 + 60))])
    assert check([lone, empty]).tolist() == [True, True]
