"""Simulated meters: realistic readings for a network, with injected faults.

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
  ``true · (1 + ε)`` and has relative 1σ = ``uncertainty``. ``uncertainty_abs`` adds
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

Faults (:mod:`cli.faults`) change what the meters measure or send; publishing is
:mod:`cli.publish`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING

import numpy as np

from cli.faults import SPIKE_DEFAULT, Fault, FaultKind, check_fault
from cli.signals import (
    _CELL_H,
    CELL,
    UNLOAD_S,
    BoolArray,
    FloatArray,
    IntArray,
    _daily,
    _dt,
    _epoch,
    _key,
    _local_offsets,
    _normal,
    _overlap,
    _periodic,
    _seasonal,
    _smear,
    _u,
    _variation,
)
from core.network import (
    Exchange,
    Kind,
    Meter,
    Network,
    ReadingType,
)
from core.units import canonical_unit, conversion
from core.windows import windows_between

if TYPE_CHECKING:
    pass


DEFAULT_NOMINAL = 10.0  # canonical unit per hour, when an exchange has no ``nominal``
DEFAULT_FLOW = 10.0  # per hour, for a meter in no exchange and no derivable balance
RATE_JITTER = 0.003  # relative white noise of an instantaneous rate reading
TRUCK_LOAD = (25.0, 40.0)  # net load of a truck, canonical unit
TRUCK_MEAN = sum(TRUCK_LOAD) / 2
TRANSIT_S = (20 * 60.0, 90 * 60.0)
WORK_HOURS = (6, 22)  # local time, Monday to Saturday
TICKET_SPACING_S = 60.0  # one truck per minute at most on a weighbridge
RESOLUTION = 3  # decimals of the meter's unit in readings
DRIFT_OPEN_RAMP = timedelta(days=30)
_REGISTER_ANCHOR = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
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

    def _drop_gaps_add_spikes(
        self, model: _MeterModel, ts: FloatArray, values: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """The last step of a register, rate or ticket meter's readings: those in its gaps
        dropped, its spikes put in."""
        keep = self._gap_mask(model, ts)
        ts, values = ts[keep], values[keep]
        self._spikes(model, ts, values)
        return ts, values

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
        return self._drop_gaps_add_spikes(model, ts, values)

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
        return self._drop_gaps_add_spikes(model, ts, values)

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
        return self._drop_gaps_add_spikes(model, ts, values)


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
