"""How the drift detector's parameters were chosen: a Monte Carlo of the windows' z.

    python -m benchmarks.drift_calibration [--paths N] [--seed S] [--check-simulator DAYS]
        [--write FILE | --no-write]

An exchange's z is N(0, 1) when its meters are as good as their stated uncertainty (the
simulator draws each meter's window error from exactly that; ``--check-simulator`` measures
what a simulated month of the example network gives). A bias of b on one meter moves z by
b/σ_d, σ_d the relative standard uncertainty of d = (1 − l)·S − R. A meter drifting linearly
is a ramp of z; a leak or a bias that appears at once is a step.

The figures printed:

* the in-control average run length ARL₀ of the two-sided CUSUM (Siegmund's approximation;
  z clamped at ±4 as ``rules.alerts.drift_series`` does, which only lengthens it) and the
  share of simulated clean years with a false alarm;
* for ramps of 3 and 6 % a month on 1 %, on the example's heat meters (1.7 % sent with 7 %
  loss, 1.8 % received) and on 2 % meters: the meter's error when the alert fires (10th,
  50th, 90th percentile);
* steps of 0.5, 1 and 2 σ: windows to detect (median);
* the same for other detectors at the same false-alarm rate: CUSUMs with other allowances,
  the CUSUM on daily sums of z, and an EWMA of z with a control limit. Those are calibrated
  by simulation to a rate that can be simulated (a false alarm in about one year in ten), so
  they compare detectors with each other; the chosen one's own rate is far lower.

Pure numpy (``--check-simulator`` also runs the simulator and the window arithmetic, no
database). The figures go to stdout and, unless ``--no-write``, to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.alerts import DRIFT_CLAMP, DriftConfig

FloatArray = npt.NDArray[np.float64]
ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Drift detector calibration"
YEAR = 8760  # hourly windows
MONTH = 720.0

# z per 1 % of bias on one meter: 1/σ_d (σ_d in %)
METERS = {
    "1 % meters": 1 / math.sqrt(1.0**2 + (0.99 * 1.0) ** 2),
    "heat meters (1.7 %, 1.8 %)": 1 / math.sqrt((0.93 * 1.7) ** 2 + 1.8**2),
    "2 % meters": 1 / math.sqrt(2.0**2 + (0.99 * 2.0) ** 2),
}


def siegmund_arl(k: float, h: float) -> float:
    """Two-sided in-control ARL of a tabular CUSUM of N(0, 1) (Siegmund's approximation)."""
    b = h + 1.166
    one = (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)
    return one / 2


Detector = Callable[[FloatArray], tuple[FloatArray, FloatArray]]


@dataclass(frozen=True)
class Cusum:
    """Hourly two-sided CUSUM (``every`` > 1: on sums of ``every`` windows' z / √every)."""

    k: float
    h: float
    every: int = 1

    def name(self) -> str:
        what = "CUSUM" if self.every == 1 else f"CUSUM of {self.every}-window sums"
        return f"{what} k = {self.k:.3g}, h = {self.h:.3g}"

    def run(self, z: FloatArray) -> FloatArray:
        """Index of the first alarm per path (columns: paths), inf when none."""
        n, paths = z.shape
        hi = np.zeros(paths)
        lo = np.zeros(paths)
        alarm = np.full(paths, np.inf)
        z = np.clip(z, -DRIFT_CLAMP, DRIFT_CLAMP)
        if self.every > 1:
            m = n // self.every
            z = z[: m * self.every].reshape(m, self.every, paths).sum(axis=1) / math.sqrt(
                self.every
            )
        for t in range(z.shape[0]):
            hi = np.maximum(0.0, hi + z[t] - self.k)
            lo = np.maximum(0.0, lo - z[t] - self.k)
            new = ((hi > self.h) | (lo > self.h)) & np.isinf(alarm)
            alarm[new] = (t + 1) * self.every
        return alarm


@dataclass(frozen=True)
class Ewma:
    """EWMA of z with a control limit at L asymptotic standard deviations."""

    lam: float
    L: float

    def name(self) -> str:
        return f"EWMA λ = {self.lam:g}, L = {self.L:.2f}"

    def run(self, z: FloatArray) -> FloatArray:
        n, paths = z.shape
        e = np.zeros(paths)
        alarm = np.full(paths, np.inf)
        limit = self.L * math.sqrt(self.lam / (2 - self.lam))
        z = np.clip(z, -DRIFT_CLAMP, DRIFT_CLAMP)
        for t in range(n):
            e = (1 - self.lam) * e + self.lam * z[t]
            new = (np.abs(e) > limit) & np.isinf(alarm)
            alarm[new] = t + 1
        return alarm


def false_alarm_share(det: Cusum | Ewma, rng: np.random.Generator, paths: int) -> float:
    z = rng.standard_normal((YEAR, paths))
    return float(np.isfinite(det.run(z)).mean())


def ramp_bias(
    det: Cusum | Ewma, per_percent: float, rate: float, rng: np.random.Generator, paths: int
) -> FloatArray:
    """The meter's error (%) when the alarm comes, for a ramp of ``rate`` % a month."""
    n = int(2 * MONTH * 3 / rate)  # long enough to reach twice 3 %
    slope = rate / MONTH  # % per window
    t = np.arange(n, dtype=np.float64)[:, None]
    z = rng.standard_normal((n, paths)) + per_percent * slope * (t + 0.5)
    alarm = det.run(z)
    return alarm * slope


def step_delay(det: Cusum | Ewma, shift: float, rng: np.random.Generator, paths: int) -> float:
    z = rng.standard_normal((2000, paths)) + shift
    return float(np.median(det.run(z)))


def calibrate(
    make: Callable[[float], Cusum | Ewma],
    lo: float,
    hi: float,
    target: float,
    rng: np.random.Generator,
    paths: int,
) -> Cusum | Ewma:
    """Bisection on the limit for a yearly false-alarm share of ``target``."""
    for _ in range(9):
        mid = (lo + hi) / 2
        if false_alarm_share(make(mid), rng, paths) > target:
            lo = mid
        else:
            hi = mid
    return make((lo + hi) / 2)


def pct(values: FloatArray) -> str:
    q = np.percentile(values, [10, 50, 90])
    return " / ".join(f"{v:.2f}" for v in q)


def check_simulator(days: int) -> list[str]:
    """z of every exchange of the example network over ``days`` simulated days."""
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from cli.simulate import simulate
    from core.network import load_network
    from core.units import conversion
    from core.windows import windows_between
    from rules.quantities import window_quantities
    from rules.reconcile import MeterQuantity, reconcile_exchange

    net = load_network(Path(__file__).resolve().parent.parent / "examples" / "kalundborg.yaml")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    end = start + timedelta(days=days)
    meters = {m.id: m for m in net.meters}
    ts: dict[str, list[FloatArray]] = {m: [] for m in meters}
    values: dict[str, list[FloatArray]] = {m: [] for m in meters}
    for chunk in simulate(net, start, end, seed=1):
        m = meters[chunk.meter_id]
        ts[m.id].append(chunk.ts)
        values[m.id].append(chunk.value * conversion(chunk.unit, m.kind, m.reading))
    lines = ["| exchange | windows | mean z | sd z | lag-1 correlation |", "|---|---|---|---|---|"]
    for ex in net.exchanges:
        wins = windows_between(start, end, ex.window, net.tz)
        q = {
            mid: window_quantities(
                meters[mid].reading,
                np.concatenate(ts[mid]),
                np.concatenate(values[mid]),
                wins,
                interval=meters[mid].interval,
            )
            for mid in (*ex.sent, *ex.received)
        }

        def side(ids: Sequence[str], i: int, q: dict[str, Any] = q) -> list[MeterQuantity]:
            return [
                MeterQuantity(
                    mid,
                    float(q[mid].quantity[i]),
                    meters[mid].uncertainty,
                    meters[mid].uncertainty_abs,
                    float(q[mid].coverage[i]),
                )
                for mid in ids
            ]

        zs = []
        for i in range(len(wins)):
            r = reconcile_exchange(side(ex.sent, i), side(ex.received, i), ex.loss)
            if r.status in ("ok", "imbalance") and r.z is not None:
                zs.append(r.z)
        z = np.array(zs)
        corr = float(np.corrcoef(z[:-1], z[1:])[0, 1]) if z.size > 2 else math.nan
        lines.append(f"| {ex.id} | {z.size} | {z.mean():+.3f} | {z.std():.3f} | {corr:+.3f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drift_calibration")
    p.add_argument("--paths", type=int, default=2000, help="simulated paths per figure")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--years", type=int, default=3000, help="clean years for the chosen one")
    p.add_argument(
        "--check-simulator",
        type=int,
        default=0,
        metavar="DAYS",
        help="also measure z on DAYS simulated days of the example network",
    )
    p.add_argument("--write", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    paths = args.paths
    chosen = Cusum(DriftConfig().k, DriftConfig().h)
    command = "python -m benchmarks.drift_calibration" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    out = [
        SECTION,
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` ({paths:,} paths "
        "per figure). The reasoning is in `rules.alerts.drift_series`.",
        "",
        f"Chosen: {chosen.name()}, z clamped at ±{DRIFT_CLAMP:g}.",
    ]
    arl = siegmund_arl(chosen.k, chosen.h)
    out.append(
        f"- ARL₀ (Siegmund, two-sided): {arl:,.0f} windows = {arl / YEAR:,.0f} years of hourly "
        "windows per exchange"
    )
    share = false_alarm_share(chosen, rng, args.years)
    out.append(
        f"- simulated clean years with a false alarm: {share * args.years:.0f} of {args.years}"
    )
    out.append("")
    out.append("Meter error (%) when drift fires, 10th / 50th / 90th percentile:")
    out.append("")
    out.append("| detector | ramp | " + " | ".join(METERS) + " |")
    out.append("|---|---|" + "---|" * len(METERS))

    def ramps(det: Cusum | Ewma) -> None:
        for rate in (3.0, 6.0):
            cells = [pct(ramp_bias(det, per, rate, rng, paths)) for per in METERS.values()]
            out.append(f"| {det.name()} | {rate:g} %/month | " + " | ".join(cells) + " |")

    ramps(chosen)
    same_arl = [Cusum(0.5, 13.9), Cusum(0.1, 62.6)]
    for det in same_arl:
        ramps(det)
    out.append("")
    for det in same_arl:
        out.append(f"- ARL₀ of {det.name()}: {siegmund_arl(det.k, det.h) / YEAR:,.0f} years")
    out.append("")
    out.append("Steps: median windows to detect a shift of z by 0.5, 1, 2 σ:")
    for det in [chosen, *same_arl]:
        cells = ", ".join(f"{step_delay(det, s, rng, paths):.0f}" for s in (0.5, 1.0, 2.0))
        out.append(f"- {det.name()}: {cells}")
    out.append("")
    target = 0.1
    out.append(
        f"Alternatives calibrated by simulation to a false alarm in {target:.0%} of clean "
        "years (so that the rate can be simulated), with a CUSUM of the same k for reference:"
    )
    out.append("")
    out.append("| detector | ramp | " + " | ".join(METERS) + " |")
    out.append("|---|---|" + "---|" * len(METERS))
    reference = calibrate(lambda h: Cusum(chosen.k, h), 5.0, 40.0, target, rng, paths)
    daily = calibrate(
        lambda h: Cusum(chosen.k * math.sqrt(24), h, 24), 0.5, 15.0, target, rng, paths
    )
    ewma = calibrate(lambda L: Ewma(0.01, L), 1.0, 8.0, target, rng, paths)
    for det in (reference, daily, ewma):
        ramps(det)
    out.append("")
    for det in (reference, daily, ewma):
        cells = ", ".join(f"{step_delay(det, s, rng, paths):.0f}" for s in (0.5, 1.0, 2.0))
        out.append(f"- steps 0.5, 1, 2 σ, {det.name()}: {cells} windows")
    if args.check_simulator:
        out.append("")
        out.append(f"z of the example network, {args.check_simulator} simulated days:")
        out.append("")
        out.extend(check_simulator(args.check_simulator))
    text = "\n".join(out) + "\n"
    print(text)
    if not args.no_write:
        from benchmarks.clients import write_section

        write_section(args.write, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
