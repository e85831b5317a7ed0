"""Window quantities from readings: hand-computed cases, DST days, the simulator."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from cli.faults import Fault, FaultKind
from cli.simulate import MeterChunk, simulate, true_flows
from core.network import Network, ReadingType, load_network, parse_network
from core.units import conversion
from core.windows import local_midnight, windows_between
from rules.quantities import (
    coverage,
    delta_quantities,
    rate_quantities,
    total_quantities,
    window_edges,
    window_quantities,
)

CPH = ZoneInfo("Europe/Copenhagen")
HOUR = 3600.0
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def minutes(a: float, b: float, step: float = 60.0) -> np.ndarray:
    """Reading times a, a + step, … up to and including b."""
    return np.arange(a, b + step / 2, step)


# ------------------------------------------------------------------------------ total


def test_total_is_the_register_interpolated_at_the_edges() -> None:
    ts = np.array([0.0, 600.0, 1200.0, 1800.0])
    v = np.array([10.0, 11.0, 13.0, 16.0])
    q = total_quantities(ts, v, [(300.0, 1500.0), (0.0, 1800.0), (600.0, 1200.0)], interval=600)
    # at 300: 10.5; at 1500: 13 + 3 · 300/600 = 14.5
    assert q.quantity.tolist() == [4.0, 6.0, 2.0]
    assert q.readings.tolist() == [2, 3, 1]
    assert q.first_ts.tolist() == [600.0, 0.0, 600.0]
    assert q.last_ts.tolist() == [1200.0, 1200.0, 600.0]
    assert q.coverage.tolist() == [1.0, 1.0, 1.0]
    assert not q.stuck.any() and not q.resets.any() and not q.negatives.any()
    assert len(q) == 3 and len(q.reset_events) == 0


def test_total_edges_between_readings_and_margins() -> None:
    # Readings at hh:mm:30, a margin reading either side of the hour: exact for a linear register.
    ts = minutes(-30.0, HOUR + 30.0)
    v = 5000.0 + 3.0 * ts / HOUR  # 3 MW
    q = total_quantities(ts, v, [(0.0, HOUR)], interval=60)
    assert q.quantity[0] == pytest.approx(3.0, rel=1e-12)
    assert q.coverage[0] == 1.0
    assert q.readings[0] == 60


def test_total_without_margins_covers_what_the_readings_span() -> None:
    ts = minutes(600.0, 3000.0)
    v = 3.0 * ts / HOUR
    q = total_quantities(ts, v, [(0.0, HOUR)], interval=60)
    assert q.quantity[0] == pytest.approx(3.0 * 2400 / HOUR)  # no extrapolation
    assert q.coverage[0] == pytest.approx((2400 + 60) / HOUR)  # ± half an interval


def test_no_data_is_nan() -> None:
    w = [(0.0, HOUR), (2 * HOUR, 3 * HOUR)]
    for q in (
        total_quantities([], [], w, interval=60),
        total_quantities([100.0], [5.0], w, interval=60),
        rate_quantities([], [], w, interval=60),
        total_quantities(minutes(4 * HOUR, 5 * HOUR), np.ones(61), w, interval=60),
    ):
        assert np.isnan(q.quantity).all()
        assert q.coverage.tolist() == [0.0, 0.0]
        assert q.readings[1] == 0 and np.isnan(q.first_ts[1])


# ---------------------------------------------------------------------- counter resets


def test_counter_reset_continues_from_the_new_register() -> None:
    ts = minutes(-60.0, 2 * HOUR + 60)
    v = 1000.0 + 2.0 * ts / HOUR  # 2 MW
    at = 5400.0
    after = ts >= at
    v[after] = 0.5 + 2.0 * (ts[after] - at) / HOUR  # replaced meter, started at 0.5
    q = total_quantities(ts, v, [(0.0, HOUR), (HOUR, 2 * HOUR)], interval=60)
    # The interval across the reset gets the neighbours' rate: the flow goes on at 2 MW.
    assert q.quantity == pytest.approx([2.0, 2.0], rel=1e-9)
    assert q.resets.tolist() == [0, 1]
    ev = q.reset_events
    assert len(ev) == 1
    assert int(ev.index[0]) == int(np.flatnonzero(ts == at)[0])
    assert float(ev.ts[0]) == at
    assert float(ev.before[0]) == pytest.approx(1000.0 + 2.0 * (at - 60) / HOUR)
    assert float(ev.after[0]) == 0.5


def test_reset_without_neighbours_counts_the_new_register_and_is_never_negative() -> None:
    ts = np.array([0.0, HOUR])
    q = total_quantities(ts, [100.0, 3.0], [(0.0, HOUR), (HOUR, 2 * HOUR)], interval=60)
    assert q.quantity[0] == 3.0
    assert q.resets.tolist() == [0, 1]  # the window of the first reading after the drop
    assert len(q.reset_events) == 1
    # A register that rolls over to a negative value (or drops to zero): nothing negative.
    q = total_quantities(ts, [100.0, -5.0], [(0.0, HOUR)], interval=60)
    assert q.quantity[0] == 0.0


def test_many_resets_never_give_a_negative_quantity() -> None:
    rng = np.random.default_rng(1)
    ts = minutes(0.0, 6 * HOUR)
    v = 1000.0 + np.cumsum(rng.uniform(0.5, 1.0, ts.size))
    drops = np.arange(10, ts.size - 1, 25)
    for k in drops:
        v[k:] -= v[k] - rng.uniform(0.0, 0.4)  # a new register at each drop
    edges = np.arange(0.0, 6 * HOUR, 900.0)
    q = total_quantities(ts, v, np.column_stack((edges, edges + 900.0)), interval=60)
    assert (q.quantity > 0).all()
    assert q.resets.sum() == len(q.reset_events) == drops.size
    assert q.reset_events.index.tolist() == drops.tolist()


def test_jitter_is_not_a_reset() -> None:
    ts = minutes(0.0, HOUR)
    v = np.full(ts.size, 1.0e6)
    v[30:] += 1e-5  # rounding noise: up, down (a drop of 1e-11 relative), up
    v[31] -= 2e-5
    q = total_quantities(ts, v, [(0.0, HOUR)], interval=60)
    assert q.resets[0] == 0 and len(q.reset_events) == 0
    assert q.negatives[0] == 1
    assert q.quantity[0] == pytest.approx(1e-5, abs=1e-9)


def test_a_spiked_register_reading_is_an_outlier_not_a_reset() -> None:
    ts = minutes(-60.0, HOUR + 60)
    v = 1.0e5 + 2.0 * ts / HOUR
    v[20] *= 10.0
    v[40] *= 0.1
    q = total_quantities(ts, v, [(0.0, HOUR)], interval=60)
    assert q.quantity[0] == pytest.approx(2.0, rel=1e-9)
    assert q.outliers[0] == 2 and q.resets[0] == 0


def test_a_stuck_register() -> None:
    ts = minutes(-60.0, 2 * HOUR)
    v = np.where(ts < HOUR, 42.0, 42.0 + (ts - HOUR) / HOUR)
    q = total_quantities(ts, v, [(0.0, HOUR), (HOUR, 2 * HOUR)], interval=60)
    assert q.stuck.tolist() == [True, False]
    assert q.quantity[0] == 0.0


# ------------------------------------------------------------------------------- rate


def test_rate_trapezoids_by_hand() -> None:
    ts = np.array([0.0, 1800.0, 3600.0])
    r = np.array([1.0, 3.0, 2.0])
    q = rate_quantities(ts, r, [(0.0, 3600.0), (900.0, 2700.0), (0.0, 1800.0)], interval=1800)
    # (1+3)/2 · ½ h + (3+2)/2 · ½ h; inside: rate 2 at 900 s, 3, 2.5 at 2700 s
    assert q.quantity.tolist() == [2.25, 0.625 + 0.6875, 1.0]
    assert q.readings.tolist() == [2, 1, 1]


def test_a_linear_ramp_is_integrated_exactly() -> None:
    ts = minutes(-60.0, 2 * HOUR)
    r = 4.0 + 6.0 * ts / HOUR  # MW, rising 6 MW an hour
    w = [(30.0, 3630.0), (1234.5, 4321.0), (0.0, HOUR)]
    q = rate_quantities(ts, r, w, interval=60)

    def integral(t: float) -> float:
        return 4.0 * t / HOUR + 3.0 * (t / HOUR) ** 2

    expected = [integral(b) - integral(a) for a, b in w]
    assert q.quantity == pytest.approx(expected, rel=1e-12)
    assert q.coverage.tolist() == [1.0, 1.0, 1.0]


def test_negative_rates_are_integrated_and_counted() -> None:
    ts = minutes(0.0, HOUR)
    r = np.where(ts < 1800, -1.0, 1.0)
    r[ts == 1800] = 0.0
    q = rate_quantities(ts, r, [(0.0, 1800.0), (0.0, HOUR)], interval=60)
    assert q.quantity[0] == pytest.approx(-0.5 + 0.5 / 60)  # the last minute ramps to 0
    assert q.quantity[1] == pytest.approx(0.0, abs=1e-12)
    assert q.negatives.tolist() == [30, 30]


def test_a_stuck_rate() -> None:
    ts = minutes(0.0, 2 * HOUR)
    r = np.where(ts < HOUR, 7.25, 7.0 + ts / 1e4)
    q = rate_quantities(ts, r, [(0.0, HOUR), (HOUR, 2 * HOUR)], interval=60)
    assert q.stuck.tolist() == [True, False]
    assert q.quantity[0] == pytest.approx(7.25 + (7.36 - 7.25) / 2 / 60)  # the last minute


# ------------------------------------------------------------------------------ delta


def test_delta_sums_tickets_in_their_window() -> None:
    ts = np.array([-10.0, 0.0, 1000.0, 3599.0, 3600.0, 5000.0])
    v = np.array([99.0, 25.5, 30.25, -1.0, 40.0, 10.0])
    w = [(0.0, HOUR), (HOUR, 2 * HOUR), (2 * HOUR, 3 * HOUR), (3 * HOUR, 4 * HOUR)]
    q = delta_quantities(ts, v, w, now=2.5 * HOUR)
    assert q.quantity[:3].tolist() == [54.75, 50.0, 0.0]
    assert np.isnan(q.quantity[3])  # not begun
    assert q.coverage.tolist() == [1.0, 1.0, 0.5, 0.0]
    assert q.negatives.tolist() == [1, 0, 0, 0]
    assert q.readings.tolist() == [3, 2, 0, 0]
    assert q.first_ts[0] == 0.0 and q.last_ts[0] == 3599.0
    hist = delta_quantities(ts, v, w)  # now=None: everything has ended
    assert hist.coverage.tolist() == [1.0] * 4
    assert hist.quantity.tolist() == [54.75, 50.0, 0.0, 0.0]


def test_a_repeated_ticket_is_stuck() -> None:
    q = delta_quantities([10.0, 20.0, 4000.0, 4100.0], [31.0, 31.0, 31.0, 29.0], [(0, HOUR)] * 2)
    assert q.stuck.tolist() == [True, True]
    q = delta_quantities([10.0, 4000.0, 4100.0], [31.0, 31.0, 29.0], [(0.0, HOUR), (HOUR, 7200)])
    assert q.stuck.tolist() == [False, False]


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("offset", [0.0, 5.0, 30.0, 59.0])
def test_regular_readings_cover_the_whole_window(offset: float) -> None:
    if offset <= 30:  # up to half an interval late, even without a margin before
        ts = minutes(offset, HOUR + offset)
        assert coverage(ts, np.array([0.0]), np.array([HOUR]), 60.0)[0] == 1.0
    ts = minutes(offset - 60, HOUR + offset)  # with the margin
    assert coverage(ts, np.array([0.0]), np.array([HOUR]), 60.0)[0] == 1.0


def test_coverage_with_half_the_readings_missing() -> None:
    s, e = np.array([0.0]), np.array([HOUR])
    every_other = minutes(-120.0, HOUR + 120, 120.0)
    assert coverage(every_other, s, e, 60.0)[0] == pytest.approx(0.5)
    first_half = np.concatenate((minutes(-60.0, 1800.0), [HOUR + 1800]))
    assert coverage(first_half, s, e, 60.0)[0] == pytest.approx(0.5, abs=0.02)
    assert coverage(np.array([-7200.0, 7200.0]), s, e, 60.0)[0] == 0.0
    assert coverage(np.zeros(0), s, e, 60.0)[0] == 0.0
    # Jitter within the gap tolerance (1.5 intervals) still covers everything.
    jittered = minutes(-60.0, HOUR + 60) + np.tile([0.0, 25.0], 32)[:63]
    assert coverage(jittered, s, e, 60.0)[0] == 1.0


def test_a_gap_keeps_the_interpolated_quantity_but_lowers_coverage() -> None:
    ts = minutes(-60.0, HOUR + 60)
    keep = (ts < 900) | (ts >= 2700)  # 30 minutes missing
    v = 7.0 * ts / HOUR
    q = total_quantities(ts[keep], v[keep], [(0.0, HOUR)], interval=60)
    assert q.quantity[0] == pytest.approx(7.0)
    assert q.coverage[0] == pytest.approx(0.5)  # 30 of 60 readings
    r = rate_quantities(ts[keep], np.full(keep.sum(), 7.0), [(0.0, HOUR)], interval=60)
    assert r.quantity[0] == pytest.approx(7.0)
    assert r.coverage[0] == q.coverage[0]


# Readings every 10 minutes, then silent for 10 hours: 00:00, 00:10, 00:20, 10:20, 10:30.
SILENT_TS = np.array([0.0, 600.0, 1200.0, 1200.0 + 10 * HOUR, 1800.0 + 10 * HOUR])
HOURLY = [(k * HOUR, (k + 1) * HOUR) for k in range(12)]


def test_a_silence_is_interpolated_across_every_window_of_it() -> None:
    v = np.array([10.0, 11.0, 12.0, 32.0, 33.0])  # 20 in the 10 silent hours
    q = total_quantities(SILENT_TS, v, HOURLY, interval=600)
    assert q.quantity[:11].tolist() == pytest.approx(
        [2.0 + 2 * 40 / 60] + [2.0] * 9 + [1.0 + 2 / 3]
    )
    assert math.fsum(q.quantity[:11]) == pytest.approx(33.0 - 10.0, rel=1e-12)
    assert math.isnan(q.quantity[11])
    # covered: 00:00–00:25 and 10:15–10:35; the rest of the silence is interpolated
    assert q.coverage.tolist() == pytest.approx([25 / 60] + [0.0] * 9 + [20 / 60, 0.0])
    r = rate_quantities(SILENT_TS, np.array([6.0, 6.0, 6.0, 12.0, 12.0]), HOURLY, interval=600)
    # one trapezoid from 00:20 (6 MW) to 10:20 (12 MW), split at the hours
    rate_at = [6.0 + 0.6 * (k - 1 / 3) for k in range(1, 11)]
    inner = [(rate_at[k] + rate_at[k + 1]) / 2 for k in range(9)]
    assert r.quantity[1:10].tolist() == pytest.approx(inner, rel=1e-12)
    assert math.fsum(r.quantity[:11]) == pytest.approx(2.0 + 90.0 + 2.0, rel=1e-12)
    assert r.coverage.tolist() == q.coverage.tolist()


def test_a_silence_longer_than_max_gap_is_a_break() -> None:
    v = np.array([10.0, 11.0, 12.0, 32.0, 33.0])
    q = total_quantities(SILENT_TS, v, HOURLY, interval=600, max_gap=5 * HOUR)
    # nothing interpolated across: the ends get their readings' part, the inside no data
    assert q.quantity[0] == 2.0 and q.quantity[10] == 1.0
    assert np.isnan(q.quantity[1:10]).all() and np.isnan(q.quantity[11])
    assert q.coverage.tolist() == pytest.approx([25 / 60] + [0.0] * 9 + [20 / 60, 0.0])
    r = rate_quantities(
        SILENT_TS, np.array([6.0, 6.0, 6.0, 12.0, 12.0]), HOURLY, interval=600, max_gap=5 * HOUR
    )
    assert r.quantity[0] == pytest.approx(2.0) and r.quantity[10] == pytest.approx(2.0)
    assert np.isnan(r.quantity[1:10]).all()
    # a silence no longer than max_gap is still interpolated
    same = total_quantities(SILENT_TS, v, HOURLY, interval=600, max_gap=10 * HOUR)
    assert same.quantity.tolist() == pytest.approx(
        total_quantities(SILENT_TS, v, HOURLY, interval=600).quantity.tolist(), nan_ok=True
    )
    with pytest.raises(ValueError, match="max_gap must be a positive number of seconds"):
        window_quantities("total", SILENT_TS, v, HOURLY, interval=600, max_gap=0.0)


# -------------------------------------------------------------------- DST and windows


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25)])
@pytest.mark.parametrize("reading", ["rate", "total"])
def test_dst_days_have_their_hours(day: date, hours: int, reading: str) -> None:
    start, end = local_midnight(day, CPH), local_midnight(day + timedelta(days=1), CPH)
    hourly = windows_between(start, end, timedelta(hours=1), CPH)
    daily = windows_between(start, end, timedelta(days=1), CPH)
    assert len(hourly) == hours and len(daily) == 1
    ts = minutes(start.timestamp() - 60, end.timestamp() + 60)
    # A constant 1 MW: as a rate, or as a register counting 1 MWh an hour.
    value = np.ones(ts.size) if reading == "rate" else 123.0 + (ts - ts[0]) / HOUR
    per_hour = window_quantities(reading, ts, value, hourly, interval=60)
    per_day = window_quantities(reading, ts, value, daily, interval=60)
    assert per_hour.quantity == pytest.approx(np.ones(hours), rel=1e-9)
    assert per_hour.quantity.sum() == pytest.approx(hours, rel=1e-12)
    assert per_day.quantity[0] == pytest.approx(hours, rel=1e-12)
    assert (per_hour.coverage == 1.0).all() and per_day.coverage[0] == 1.0
    assert per_day.readings[0] == hours * 60


def test_window_forms_and_errors() -> None:
    a, b = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 1, 1, tzinfo=UTC)
    as_dt = window_edges([(a, b)])
    as_float = window_edges([(a.timestamp(), b.timestamp())])
    as_array = window_edges(np.array([[a.timestamp(), b.timestamp()]]))
    for edges in (as_float, as_array):
        assert edges[0].tolist() == as_dt[0].tolist() and edges[1].tolist() == as_dt[1].tolist()
    assert window_edges([])[0].size == 0
    with pytest.raises(ValueError, match="time zone"):
        window_edges([(a.replace(tzinfo=None), b)])
    with pytest.raises(ValueError, match="before it starts"):
        window_edges([(b, a)])
    with pytest.raises(ValueError, match="sorted"):
        total_quantities([2.0, 1.0], [1.0, 2.0], [(0.0, 3.0)], interval=1)
    with pytest.raises(ValueError, match="interval"):
        window_quantities("total", [1.0], [1.0], [(0.0, 3.0)])
    with pytest.raises(ValueError):
        window_quantities("nonsense", [1.0], [1.0], [(0.0, 3.0)], interval=1)


def test_windows_are_independent_of_order() -> None:
    ts = minutes(-60.0, 3 * HOUR + 60)
    v = np.cumsum(np.random.default_rng(3).uniform(0, 1, ts.size))
    w = np.array([[0.0, HOUR], [HOUR, 2 * HOUR], [1800.0, 9000.0], [2 * HOUR, 3 * HOUR]])
    fwd = total_quantities(ts, v, w, interval=60)
    back = total_quantities(ts, v, w[::-1], interval=60)
    assert fwd.quantity.tolist() == back.quantity[::-1].tolist()
    assert fwd.quantity[[0, 1, 3]].sum() == pytest.approx(v[-2] - v[1])


# -------------------------------------------------------------------------- simulator


def collect(chunks: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts: dict[str, list[MeterChunk]] = defaultdict(list)
    for chunk in chunks:
        parts[chunk.meter_id].append(chunk)
    return {
        mid: (np.concatenate([c.ts for c in cs]), np.concatenate([c.value for c in cs]))
        for mid, cs in parts.items()
    }


def canonical(net: Network, data: dict[str, Any], meter_id: str) -> tuple[Any, Any]:
    m = net.meter(meter_id)
    ts, v = data[meter_id]
    return ts, v * conversion(m.unit, m.kind, m.reading)


def measure(net: Network, data: dict[str, Any], meter_id: str, starts: Any, ends: Any) -> Any:
    m = net.meter(meter_id)
    ts, v = canonical(net, data, meter_id)
    return window_quantities(m.reading, ts, v, np.column_stack((starts, ends)), interval=m.interval)


@pytest.fixture(scope="module")
def small() -> Network:
    return load_network(EXAMPLES / "small.yaml")


SIM_START = datetime(2026, 10, 1, tzinfo=CPH).astimezone(UTC)
SIM_END = SIM_START + timedelta(days=3)
MARGIN = timedelta(hours=1)


def simulated(net: Network, faults: list[Fault], seed: int = 11) -> tuple[Any, Any]:
    """Readings with a margin around the range, and the truth of the range itself."""
    data = collect(simulate(net, SIM_START - MARGIN, SIM_END + MARGIN, faults=faults, seed=seed))
    return data, true_flows(net, SIM_START, SIM_END, faults=faults, seed=seed)


def test_simulated_meters_match_the_truth(small: Network) -> None:
    data, truth = simulated(small, [])
    for ex in small.exchanges:
        t = truth[ex.id]
        for side, true_q in ((ex.sent, t.sent), (ex.received, t.received)):
            (mid,) = side
            meter = small.meter(mid)
            q = measure(small, data, mid, t.starts, t.ends)
            assert (q.coverage == 1.0).all()
            assert not q.stuck.any() and not q.resets.any() and not q.negatives.any()
            sigma = np.sqrt((meter.uncertainty * true_q) ** 2 + meter.uncertainty_abs**2)
            if meter.reading == ReadingType.delta:
                sigma += 0.01 * q.readings  # tickets print 0.01 t
            assert (np.abs(q.quantity - true_q) < 5 * sigma + 1e-9).all(), mid
            if ex.window == timedelta(hours=1):
                rel = q.quantity / true_q - 1
                assert 0.6 * meter.uncertainty < rel.std() < 1.4 * meter.uncertainty
                assert abs(rel.mean()) < 0.5 * meter.uncertainty


def test_a_simulated_reset_is_found_and_bridged(small: Network) -> None:
    mid = small.exchanges[0].sent[0]
    when = datetime(2026, 10, 2, 12, 0, tzinfo=UTC)
    data, truth = simulated(small, [Fault(FaultKind.reset, mid, start=when)])
    t = truth[small.exchanges[0].id]
    q = measure(small, data, mid, t.starts, t.ends)
    hit = np.flatnonzero(q.resets)
    assert hit.size == 1 and t.starts[hit[0]] == when.timestamp()
    assert len(q.reset_events) == 1 and float(q.reset_events.ts[0]) == when.timestamp()
    assert float(q.reset_events.after[0]) * 3.6 <= 10.0  # the new register, GJ → MWh
    assert (q.quantity > 0).all()
    u = small.meter(mid).uncertainty
    assert np.abs(q.quantity / t.sent - 1).max() < 5 * u


def test_simulated_gap_and_stuck(small: Network) -> None:
    mid = small.exchanges[0].received[0]
    gap_at = datetime(2026, 10, 2, 6, 0, tzinfo=UTC)
    stuck_at = datetime(2026, 10, 3, 6, 0, tzinfo=UTC)
    faults = [
        Fault(FaultKind.gap, mid, start=gap_at, duration=timedelta(minutes=30)),
        Fault(FaultKind.stuck, mid, start=stuck_at, duration=timedelta(hours=1)),
    ]
    data, truth = simulated(small, faults)
    t = truth[small.exchanges[0].id]
    q = measure(small, data, mid, t.starts, t.ends)
    g = int(np.flatnonzero(t.starts == gap_at.timestamp())[0])
    assert q.coverage[g] == pytest.approx(0.5, abs=0.02)
    assert q.readings[g] == 30
    u = small.meter(mid).uncertainty
    assert abs(q.quantity[g] / t.received[g] - 1) < 5 * u  # interpolated across the gap
    s = int(np.flatnonzero(t.starts == stuck_at.timestamp())[0])
    assert q.stuck.tolist() == [i == s for i in range(len(q))]
    assert q.quantity[s] == 0.0
    # The window before the gap ends in it: its last half interval is not covered.
    assert q.coverage[g - 1] == pytest.approx(1 - 30 / HOUR)
    others = np.ones(len(q), dtype=bool)
    others[[g - 1, g]] = False
    assert (q.coverage[others] == 1.0).all()


RATES: dict[str, Any] = {
    "network": "rates",
    "name": "Rates",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": "p", "name": "P"}, {"id": "q", "name": "Q"}],
    "meters": [
        {
            "id": "p-steam-out",
            "partner": "p",
            "kind": "heat",
            "medium": "steam",
            "reading": "rate",
            "unit": "MW",
            "uncertainty": 0.01,
            "interval": 60,
        },
        {
            "id": "q-steam-in",
            "partner": "q",
            "kind": "heat",
            "medium": "steam",
            "reading": "rate",
            "unit": "kW",
            "uncertainty": 0.01,
            "interval": 30,
        },
    ],
    "exchanges": [
        {
            "id": "steam-p-q",
            "provider": "p",
            "receiver": "q",
            "kind": "heat",
            "sent": ["p-steam-out"],
            "received": ["q-steam-in"],
            "loss": 0.04,
            "window": "15m",
            "nominal": 20,
        }
    ],
}


def test_simulated_rates_match_the_truth() -> None:
    net = parse_network(RATES)
    data, truth = simulated(net, [])
    t = truth["steam-p-q"]
    for mid, true_q in (("p-steam-out", t.sent), ("q-steam-in", t.received)):
        q = measure(net, data, mid, t.starts, t.ends)
        assert (q.coverage == 1.0).all()
        rel = q.quantity / true_q - 1
        assert np.abs(rel).max() < 5 * 0.01, mid
        assert 0.6 * 0.01 < rel.std() < 1.4 * 0.01
        day = measure(net, data, mid, SIM_START.timestamp(), SIM_END.timestamp())
        assert day.quantity[0] == pytest.approx(q.quantity.sum(), rel=1e-12)
    assert math.isclose(t.received.sum(), 0.96 * t.sent.sum(), rel_tol=1e-9)
