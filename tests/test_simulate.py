"""The meter simulator: deterministic, true to its ground truth, faults as documented."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli.faults import Fault, FaultKind, parse_fault, parse_time
from cli.publish import format_ts, parse_mqtt_url, payloads, publish
from cli.simulate import MeterChunk, simulate, true_flows
from core.network import Network, ReadingType, load_network, parse_network
from core.units import conversion

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UTC_OCT = datetime(2026, 10, 1, tzinfo=UTC)

# Used when examples/small.yaml is not there: the same shape (a heat pipe with total
# registers in two units, a trucked material with weighbridges).
FALLBACK: dict[str, Any] = {
    "network": "small",
    "name": "Small",
    "timezone": "Europe/Copenhagen",
    "partners": [
        {"id": "plant", "name": "Plant"},
        {"id": "town", "name": "Town"},
        {"id": "boards", "name": "Boards"},
    ],
    "meters": [
        {
            "id": "plant-heat-out",
            "partner": "plant",
            "kind": "heat",
            "medium": "hot water",
            "reading": "total",
            "unit": "GJ",
            "uncertainty": 0.017,
            "interval": 60,
        },
        {
            "id": "town-heat-in",
            "partner": "town",
            "kind": "heat",
            "medium": "hot water",
            "reading": "total",
            "unit": "kWh",
            "uncertainty": 0.018,
            "interval": 60,
        },
        {
            "id": "plant-gypsum-weighbridge",
            "partner": "plant",
            "kind": "material",
            "reading": "delta",
            "unit": "t",
            "uncertainty": 0.002,
            "uncertainty_abs": 0.02,
        },
        {
            "id": "boards-gypsum-weighbridge",
            "partner": "boards",
            "kind": "material",
            "reading": "delta",
            "unit": "kg",
            "uncertainty": 0.002,
            "uncertainty_abs": 0.02,
        },
    ],
    "exchanges": [
        {
            "id": "heat-plant-town",
            "provider": "plant",
            "receiver": "town",
            "kind": "heat",
            "sent": ["plant-heat-out"],
            "received": ["town-heat-in"],
            "loss": 0.05,
            "window": "1h",
            "nominal": 5,
        },
        {
            "id": "gypsum-plant-boards",
            "provider": "plant",
            "receiver": "boards",
            "kind": "material",
            "sent": ["plant-gypsum-weighbridge"],
            "received": ["boards-gypsum-weighbridge"],
            "loss": 0.0,
            "window": "1d",
            "nominal": 4.17,
        },
    ],
}

# Every reading type, a balance-derived meter and a meter in nothing.
RICH: dict[str, Any] = {
    "network": "rich",
    "name": "Rich",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": "p", "name": "P"}, {"id": "q", "name": "Q"}],
    "meters": [
        {
            "id": "p-boiler",
            "partner": "p",
            "kind": "heat",
            "medium": "steam",
            "reading": "rate",
            "unit": "MW",
            "uncertainty": 0.01,
            "interval": 60,
        },
        {
            "id": "p-steam-out",
            "partner": "p",
            "kind": "heat",
            "medium": "steam",
            "reading": "total",
            "unit": "GJ",
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
            "interval": 60,
        },
        {
            "id": "p-other",
            "partner": "p",
            "kind": "heat",
            "reading": "total",
            "unit": "MWh",
            "uncertainty": 0.01,
            "interval": 60,
        },
        {
            "id": "p-water-out",
            "partner": "p",
            "kind": "water",
            "reading": "delta",
            "unit": "m3",
            "uncertainty": 0.01,
            "interval": 900,
        },
        {
            "id": "q-water-in",
            "partner": "q",
            "kind": "water",
            "reading": "total",
            "unit": "l",
            "uncertainty": 0.01,
            "interval": 300,
        },
        {
            "id": "p-spare",
            "partner": "p",
            "kind": "water",
            "reading": "total",
            "unit": "m3",
            "uncertainty": 0.01,
            "interval": 60,
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
            "nominal": 20,
        },
        {
            "id": "water-p-q",
            "provider": "p",
            "receiver": "q",
            "kind": "water",
            "sent": ["p-water-out"],
            "received": ["q-water-in"],
            "loss": 0.01,
            "nominal": 100,
        },
    ],
    "balances": [
        {
            "id": "p-header",
            "kind": "heat",
            "in": ["p-boiler"],
            "out": ["p-steam-out", "p-other"],
            "loss": 0.0,
        },
    ],
}


@pytest.fixture(scope="module")
def small() -> Network:
    path = EXAMPLES / "small.yaml"
    return load_network(path) if path.exists() else parse_network(FALLBACK)


@pytest.fixture(scope="module")
def rich() -> Network:
    return parse_network(RICH)


def month(net: Network) -> tuple[datetime, datetime]:
    return (
        datetime(2026, 10, 1, tzinfo=net.tz).astimezone(UTC),
        datetime(2026, 11, 1, tzinfo=net.tz).astimezone(UTC),
    )


def collect(chunks: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts: dict[str, list[MeterChunk]] = defaultdict(list)
    for chunk in chunks:
        parts[chunk.meter_id].append(chunk)
    return {
        mid: (np.concatenate([c.ts for c in cs]), np.concatenate([c.value for c in cs]))
        for mid, cs in parts.items()
    }


@pytest.fixture(scope="module")
def small_month(small: Network) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    start, end = month(small)
    return collect(simulate(small, start, end, seed=7))


def factor(net: Network, meter_id: str) -> float:
    m = net.meter(meter_id)
    return conversion(m.unit, m.kind, m.reading)


def window_quantities(
    net: Network,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    meter_id: str,
    edges: np.ndarray,
) -> np.ndarray:
    """Canonical quantity per window the way the quantity rules compute it."""
    ts, v = data[meter_id]
    m = net.meter(meter_id)
    k = factor(net, meter_id)
    if m.reading == "total":
        return np.diff(np.interp(edges, ts, v)) * k
    if m.reading == "rate":
        cum = np.concatenate(([0.0], np.cumsum(np.diff(ts) * (v[1:] + v[:-1]) / 2 / 3600)))
        return np.diff(np.interp(edges, ts, cum)) * k
    idx = np.searchsorted(edges, ts, side="right") - 1
    ok = (idx >= 0) & (idx < edges.size - 1)
    return np.bincount(idx[ok], weights=v[ok], minlength=edges.size - 1) * k


# ------------------------------------------------------------------------ determinism


def test_same_seed_same_data_other_seed_other_data(rich: Network) -> None:
    start = UTC_OCT
    end = start + timedelta(hours=6)
    a = collect(simulate(rich, start, end, seed=3))
    b = collect(simulate(rich, start, end, seed=3))
    c = collect(simulate(rich, start, end, seed=4))
    for mid in a:
        assert np.array_equal(a[mid][0], b[mid][0]) and np.array_equal(a[mid][1], b[mid][1])
    assert any(not np.array_equal(a[m][1], c[m][1]) for m in a)


def test_chunking_does_not_change_the_readings(rich: Network) -> None:
    start = UTC_OCT + timedelta(minutes=7, seconds=30)
    end = start + timedelta(days=2)
    a = collect(simulate(rich, start, end, chunk=timedelta(days=1)))
    b = collect(simulate(rich, start, end, chunk=timedelta(minutes=37)))
    for mid in a:
        assert np.array_equal(a[mid][0], b[mid][0]), mid
        assert np.allclose(a[mid][1], b[mid][1], rtol=0, atol=2e-3), mid


def test_chunks_come_in_time_order_with_every_meter(rich: Network) -> None:
    start = UTC_OCT
    chunks = list(simulate(rich, start, start + timedelta(hours=3), chunk=timedelta(hours=1)))
    assert len(chunks) == 3 * len(rich.meters)
    spans = [(c.start, c.end) for c in chunks]
    assert spans == sorted(spans)
    for c in chunks:
        assert ((c.ts >= c.start) & (c.ts < c.end)).all()
        assert c.unit == rich.meter(c.meter_id).unit


# ------------------------------------------------------------------------------ truth


def test_a_month_matches_the_truth_within_a_few_sigma(
    small: Network, small_month: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    start, end = month(small)
    truth = true_flows(small, start, end, seed=7)
    for ex in small.exchanges:
        t = truth[ex.id]
        edges = np.concatenate((t.starts, t.ends[-1:]))
        assert edges[0] == start.timestamp() and edges[-1] == end.timestamp()
        for side, true_q in ((ex.sent, t.sent), (ex.received, t.received)):
            measured = sum(window_quantities(small, small_month, mid, edges) for mid in side)
            u = max(small.meter(mid).uncertainty for mid in side)
            sigma = u * math.sqrt(float((true_q**2).sum())) + 1.0
            assert abs(measured.sum() - true_q.sum()) < 4 * sigma, (ex.id, side)
            if ex.window == timedelta(hours=1):
                rel = measured / true_q - 1
                assert 0.75 * u < rel.std() < 1.25 * u  # a window's 1σ is the uncertainty
        sent, received = t.total()
        assert received == pytest.approx((1 - ex.loss) * sent, rel=1e-9)
        nominal = ex.nominal or 10.0
        hours = (end - start).total_seconds() / 3600
        assert 0.7 * nominal * hours < sent < 1.4 * nominal * hours


def test_received_is_sent_less_the_loss(rich: Network) -> None:
    start = UTC_OCT
    end = start + timedelta(days=7)
    data = collect(simulate(rich, start, end))
    truth = true_flows(rich, start, end)
    for ex in rich.exchanges:
        t = truth[ex.id]
        edges = np.concatenate((t.starts, t.ends[-1:]))
        s = window_quantities(rich, data, ex.sent[0], edges).sum()
        r = window_quantities(rich, data, ex.received[0], edges).sum()
        assert r / s == pytest.approx(1 - ex.loss, abs=0.004), ex.id
        assert s == pytest.approx(t.sent.sum(), rel=0.004)


def test_balance_and_idle_meters(rich: Network) -> None:
    start = UTC_OCT
    end = start + timedelta(days=2)
    data = collect(simulate(rich, start, end))
    edges = np.array([start.timestamp(), end.timestamp() - 60])
    boiler = window_quantities(rich, data, "p-boiler", edges)[0]
    outs = sum(window_quantities(rich, data, m, edges)[0] for m in ("p-steam-out", "p-other"))
    assert boiler == pytest.approx(outs, rel=0.01)
    spare = window_quantities(rich, data, "p-spare", edges)[0]
    assert spare == pytest.approx(10.0 * (edges[1] - edges[0]) / 3600, rel=0.02)


def test_heat_is_seasonal_and_daily(small: Network) -> None:
    ex = small.exchanges[0]
    jan = true_flows(small, datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 17, tzinfo=UTC))
    jul = true_flows(small, datetime(2026, 7, 10, tzinfo=UTC), datetime(2026, 7, 17, tzinfo=UTC))
    assert jan[ex.id].total()[0] > 1.6 * jul[ex.id].total()[0]
    t = jan[ex.id]
    hours = np.array([datetime.fromtimestamp(s, small.tz).hour for s in t.starts])
    assert t.sent[hours == 7].mean() > 1.15 * t.sent[hours == 2].mean()


# -------------------------------------------------------------------- registers, tickets


def test_total_registers_only_go_up(
    small: Network, small_month: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    for m in small.meters:
        if m.reading == "total":
            ts, v = small_month[m.id]
            assert (np.diff(v) >= 0).all()
            assert v[0] > 1e4
            assert (ts % m.interval == 0).all() and (np.diff(ts) == m.interval).all()
            assert np.array_equal(v, np.round(v, 3))


def test_tickets_are_trucks_in_working_hours(
    small: Network, small_month: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    ex = next(e for e in small.exchanges if e.window == timedelta(days=1))
    sent_ts, sent_v = small_month[ex.sent[0]]
    recv_ts, recv_v = small_month[ex.received[0]]
    for ts in (sent_ts, recv_ts):
        local = [datetime.fromtimestamp(t, small.tz) for t in ts]
        assert all(6 <= d.hour < 22 and d.weekday() < 6 for d in local)
        assert (np.diff(ts) > 0).all()
    masses = sent_v * factor(small, ex.sent[0])
    assert ((masses > 24) & (masses < 41)).all()
    days = 27  # working days in October 2026
    assert 0.6 * (ex.nominal or 10) * 24 * 31 / 32.5 / days < sent_ts.size / days
    # Same trucks at both ends, each arriving 20-90 minutes after it left.
    assert sent_ts.size == recv_ts.size
    transit = recv_ts - sent_ts  # both in departure order unless trucks overtake
    assert np.median(transit) > 20 * 60 and np.median(transit) < 90 * 60
    received = recv_v * factor(small, ex.received[0])
    assert received.sum() == pytest.approx((1 - ex.loss) * masses.sum(), rel=0.003)


def test_periodic_delta_sums_to_the_flow(rich: Network) -> None:
    start = UTC_OCT
    end = start + timedelta(days=1)
    data = collect(simulate(rich, start, end, chunk=timedelta(hours=5)))
    ts, v = data["p-water-out"]
    assert ts[0] == start.timestamp() + 900 and (np.diff(ts) == 900).all()
    total_ts, total_v = data["q-water-in"]
    span = np.interp([start.timestamp(), ts[-1]], total_ts, total_v)
    received = (span[1] - span[0]) * factor(rich, "q-water-in")
    assert v.sum() * factor(rich, "p-water-out") * 0.99 == pytest.approx(received, rel=0.008)


# ---------------------------------------------------------------------------- faults


def at(text: str) -> datetime:
    return parse_time(text)


def run(net: Network, days: float, faults: list[Fault], seed: int = 0) -> Any:
    start = UTC_OCT
    end = start + timedelta(days=days)
    return collect(simulate(net, start, end, faults=faults, seed=seed)), start, end


def test_leak_shows_as_lower_received(small: Network) -> None:
    ex = small.exchanges[0]
    leak = parse_fault(f"leak:{ex.id}:5%@2026-10-03T00:00Z", small)
    data, start, end = run(small, 5, [leak])
    truth = true_flows(small, start, end, faults=[leak])[ex.id]
    edges = np.concatenate((truth.starts, truth.ends[-1:]))
    s = window_quantities(small, data, ex.sent[0], edges)
    r = window_quantities(small, data, ex.received[0], edges)
    before = truth.starts < at("2026-10-03T00:00Z").timestamp()
    assert r[before].sum() / s[before].sum() == pytest.approx(1 - ex.loss, abs=0.006)
    assert r[~before].sum() / s[~before].sum() == pytest.approx(1 - ex.loss - 0.05, abs=0.006)
    assert truth.received[~before] == pytest.approx((1 - ex.loss - 0.05) * truth.sent[~before])


def test_leak_on_trucks_reduces_received_tickets(small: Network) -> None:
    ex = next(e for e in small.exchanges if e.window == timedelta(days=1))
    leak = Fault(FaultKind.leak, ex.id, 0.1)
    data, start, end = run(small, 7, [leak])
    sent = data[ex.sent[0]][1].sum() * factor(small, ex.sent[0])
    received = data[ex.received[0]][1].sum() * factor(small, ex.received[0])
    assert received / sent == pytest.approx(0.9, abs=0.005)
    truth = true_flows(small, start, end, faults=[leak])[ex.id]
    assert truth.received.sum() == pytest.approx(0.9 * truth.sent.sum())


def test_gap_leaves_no_readings(small: Network) -> None:
    mid = small.exchanges[0].received[0]
    gap = parse_fault(f"gap:{mid}@2026-10-01T06:00Z+2h", small)
    data, _, _ = run(small, 1, [gap])
    ts, v = data[mid]
    lo, hi = at("2026-10-01T06:00Z").timestamp(), at("2026-10-01T08:00Z").timestamp()
    assert not ((ts >= lo) & (ts < hi)).any()
    assert (ts == lo - 60).any() and (ts == hi).any()
    assert (np.diff(v) >= 0).all()  # the register went on counting


def test_drift_reaches_its_size(small: Network) -> None:
    mid = small.exchanges[0].sent[0]
    drift = parse_fault(f"drift:{mid}:3%", small)
    clean, start, end = run(small, 4, [])
    drifted, _, _ = run(small, 4, [drift])
    edges = np.arange(start.timestamp(), end.timestamp() + 1, 3600.0)
    ratio = window_quantities(small, drifted, mid, edges) / window_quantities(
        small, clean, mid, edges
    )
    progress = (edges[:-1] + 1800 - edges[0]) / (edges[-1] - edges[0])
    assert ratio == pytest.approx(1 + 0.03 * progress, abs=2e-4)
    assert ratio[-1] == pytest.approx(1.03, abs=5e-4)


def test_stuck_register_and_rate(rich: Network) -> None:
    faults = [
        parse_fault("stuck:p-steam-out@2026-10-01T03:00Z+2h", rich),
        parse_fault("stuck:q-steam-in@2026-10-01T03:00:30Z+2h", rich),
    ]
    data, _, _ = run(rich, 0.5, faults)
    lo, hi = at("2026-10-01T03:00Z").timestamp(), at("2026-10-01T05:00Z").timestamp()
    for mid in ("p-steam-out", "q-steam-in"):
        ts, v = data[mid]
        inside = (ts >= lo) & (ts < hi)
        assert inside.sum() >= 119
        assert np.unique(v[inside]).size == 1, mid
        after = v[ts >= hi + 600]
        assert np.unique(after).size > 10  # moving again
    ts, v = data["p-steam-out"]
    assert v[ts == hi][0] == v[ts == lo][0]  # counted nothing while stuck
    ts, v = data["q-steam-in"]
    assert v[ts == lo + 60][0] == v[ts == lo][0]  # the rate repeats its last reading


def test_stuck_weighbridge_repeats_its_ticket(small: Network) -> None:
    mid = small.exchanges[1].received[0]
    data, _, _ = run(small, 7, [parse_fault(f"stuck:{mid}@2026-10-02T00:00Z+3d", small)])
    ts, v = data[mid]
    inside = (ts >= at("2026-10-02T00:00Z").timestamp()) & (
        ts < at("2026-10-05T00:00Z").timestamp()
    )
    assert inside.sum() >= 3 and np.unique(v[inside]).size == 1


def test_reset_drops_the_register_once(small: Network) -> None:
    mid = small.exchanges[0].sent[0]
    data, _, _ = run(small, 2, [parse_fault(f"reset:{mid}@2026-10-01T12:00Z", small)])
    ts, v = data[mid]
    drops = np.flatnonzero(np.diff(v) < 0)
    assert drops.size == 1
    assert ts[drops[0] + 1] == at("2026-10-01T12:00Z").timestamp()
    assert v[drops[0] + 1] <= 10.0
    assert (np.diff(v[drops[0] + 1 :]) >= 0).all()


def test_spike_is_one_reading(rich: Network) -> None:
    spike = parse_fault("spike:q-steam-in:10@2026-10-01T02:00:10Z", rich)
    clean, _, _ = run(rich, 0.25, [])
    spiked, _, _ = run(rich, 0.25, [spike])
    ts, v = spiked["q-steam-in"]
    differs = np.flatnonzero(v != clean["q-steam-in"][1])
    assert differs.size == 1
    assert ts[differs[0]] == at("2026-10-01T02:01Z").timestamp()
    assert v[differs[0]] == pytest.approx(10 * clean["q-steam-in"][1][differs[0]], rel=1e-6)


def test_parse_fault_syntax(small: Network) -> None:
    ex = small.exchanges[0]
    mid = ex.received[0]
    f = parse_fault(f"leak:{ex.id}:5%@2026-10-10T00:00Z", small)
    assert (f.kind, f.subject, f.size, f.duration) == ("leak", ex.id, 0.05, None)
    assert f.start == datetime(2026, 10, 10, tzinfo=UTC)
    f = parse_fault(f"stuck:{mid}@2026-10-05T00:00+02:00+6h", small)
    assert f.start == datetime(2026, 10, 4, 22, tzinfo=UTC) and f.duration == timedelta(hours=6)
    f = parse_fault(f"drift:{mid}:-0.02", small)
    assert f.size == -0.02 and f.start is None
    f = parse_fault(f"gap:{mid}+90m", small)
    assert f.duration == timedelta(minutes=90)
    assert parse_fault(f"spike:{mid}@2026-10-20T08:00", small).size is None  # default ×10
    for spec in (f"leak:{ex.id}:5%@2026-10-10T00:00Z+1d", f"spike:{mid}:3@2026-10-20T08:00Z"):
        fault = parse_fault(spec, small)
        assert parse_fault(str(fault), small) == fault
    assert parse_fault(f"spike:{mid}@2026-10-20", small).start == datetime(
        2026, 10, 19, 22, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("leak:nope:5%", "unknown exchange 'nope'"),
        ("drift:nope:3%", "unknown meter 'nope'"),
        ("leak:{meter}:5%", "leak applies to an exchange"),
        ("drift:{exchange}:3%", "drift applies to a meter"),
        ("leak:{exchange}:5", "must be a fraction"),
        ("leak:{exchange}", "leak needs a size"),
        ("drift:{meter}:lots", "bad size"),
        ("drift:{meter}:3%@yesterday", "bad time"),
        ("gap:{meter}:5%", "gap takes no size"),
        ("gap:{meter}@2026-10-01T00:00Z+6y", "not a duration"),
        ("spike:{meter}@2026-10-01T00:00Z+1h", "takes no duration"),
        ("reset:{ticket}@2026-10-01T00:00Z", "reset needs a total meter"),
        ("melt:{meter}", "unknown fault kind 'melt'"),
        ("nonsense", "bad fault"),
    ],
)
def test_parse_fault_errors(small: Network, spec: str, message: str) -> None:
    text = spec.format(
        meter=small.exchanges[0].received[0],
        exchange=small.exchanges[0].id,
        ticket=small.exchanges[1].sent[0],
    )
    with pytest.raises(ValueError, match=message):
        parse_fault(text, small)


# --------------------------------------------------------------------------- payloads


def test_timestamps_and_payload_forms() -> None:
    ts = np.array([datetime(2026, 10, 1, tzinfo=UTC).timestamp(), 1790812860.25])
    assert format_ts(ts) == ["2026-10-01T00:00:00Z", "2026-10-01T00:01:00.250Z"]
    chunk = MeterChunk("m-1", "p", "GJ", ReadingType.total, 0.0, 1.0, ts, np.array([123.4, 123.5]))
    [(topic, body, n)] = list(payloads(chunk, "batch"))
    assert topic == "symbiont/readings/p/m-1" and n == 2
    assert json.loads(body) == [
        {"ts": "2026-10-01T00:00:00Z", "value": 123.4, "unit": "GJ"},
        {"ts": "2026-10-01T00:01:00.250Z", "value": 123.5, "unit": "GJ"},
    ]
    singles = [json.loads(b) for _, b, _ in payloads(chunk, "single")]
    assert singles[1] == {"ts": "2026-10-01T00:01:00.250Z", "value": 123.5, "unit": "GJ"}
    [(_, body, _)] = list(payloads(chunk, "senml"))
    senml = json.loads(body)
    assert senml[0]["bn"] == "m-1" and senml[0]["t"] == ts[0] and senml[1]["v"] == 123.5
    assert len(list(payloads(chunk, "batch", batch_size=1))) == 2
    assert parse_mqtt_url("mqtts://u%40x:p%3Aw@broker:8884") == ("broker", 8884, "u@x", "p:w", True)
    assert parse_mqtt_url("mqtt://localhost")[1] == 1883


def test_a_month_of_30_one_minute_meters_is_fast() -> None:
    meters = [
        {
            "id": f"m{i}",
            "partner": "pq"[i % 2],
            "kind": "heat",
            "reading": ("total", "rate")[i % 2],
            "unit": "MWh" if i % 2 == 0 else "MW",
            "uncertainty": 0.01,
            "interval": 60,
        }
        for i in range(30)
    ]
    net = parse_network(
        {
            "network": "big",
            "name": "Big",
            "timezone": "Europe/Copenhagen",
            "partners": [{"id": "p", "name": "P"}, {"id": "q", "name": "Q"}],
            "meters": meters,
            "exchanges": [
                {
                    "id": f"x{i}",
                    "provider": "p",
                    "receiver": "q",
                    "kind": "heat",
                    "sent": [f"m{2 * i}"],
                    "received": [f"m{2 * i + 1}"],
                    "nominal": 5,
                }
                for i in range(15)
            ],
        }
    )
    began = time.perf_counter()
    n = sum(len(c) for c in simulate(net, UTC_OCT, UTC_OCT + timedelta(days=31)))
    assert n == 30 * 31 * 1440
    assert time.perf_counter() - began < 5.0


# ---------------------------------------------------------------------------- publish


def test_publish_backfill_and_live(small: Network, mosquitto: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[tuple[str, Any]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, msg: got.append((msg.topic, json.loads(msg.payload)))
    sub.on_connect = lambda c, *a: c.subscribe("symbiont/readings/#", qos=1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    try:
        assert subscribed.wait(5)
        start = UTC_OCT
        chunks = list(simulate(small, start, start + timedelta(hours=6)))
        readings = sum(len(c) for c in chunks)
        result = publish(small, chunks, mosquitto.url, batch_size=100)
        assert result.readings == readings and result.acked == result.messages
        assert result.failed == 0
        deadline = time.monotonic() + 5
        while sum(len(b) for _, b in got) < readings and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(len(b) for _, b in got) == readings
        first = chunks[0]
        sent = [b for t, b in got if t == f"symbiont/readings/{first.partner_id}/{first.meter_id}"]
        assert sent[0][0] == {
            "ts": "2026-10-01T00:00:00Z",
            "value": float(first.value[0]),
            "unit": first.unit,
        }

        got.clear()
        live_chunks = simulate(small, start, start + timedelta(minutes=10))
        result = publish(
            small,
            live_chunks,
            mosquitto.url,
            live=True,
            speed=600.0,
            clock_start=start,
            form="senml",
        )
        assert result.readings == result.messages == 2 * 10  # one reading per message
        deadline = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(len(b) == 1 and "bn" in b[0] for _, b in got)
    finally:
        sub.loop_stop()
        sub.disconnect()
