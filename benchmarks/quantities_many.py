"""Window quantities one meter at a time against many at once.

``python -m benchmarks.quantities_many [--items 20000] [--repeat 3]``

For each reading type, ``--items`` typical sparse-load items (``rules.quantities_many``): a
meter reading every 60 s, a cluster of 3 contiguous hourly windows and its readings with a
margin of 2 minutes either side (185 readings, at a random second of the minute), ``now`` in
the third window. ``total`` registers count up by a random amount every minute, ``rate`` and
``delta`` values are random and positive. A second case, ``short``, has 5 readings a minute
apart around one 15-minute window edge (2 windows): what the engine gets when a meter's
newest reading is all that is new.

Timed, best of ``--repeat``: ``window_quantities`` called per item, and
``window_quantities_many`` over all of them; printed in µs per item. Every result of the
latter is checked equal, field by field, to the former's (not timed).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np

from core.network import ReadingType
from rules.quantities import WindowQuantities
from rules.quantities_many import QuantityItem, window_quantities_many_outcome

HOUR = 3600.0
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


def _values(kind: ReadingType, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == ReadingType.total:
        return np.asarray(5000.0 + np.cumsum(rng.uniform(0.0, 0.1, n)))
    return np.asarray(rng.uniform(0.5, 2.0, n))


def hourly_items(kind: ReadingType, count: int, seed: int = 1) -> list[QuantityItem]:
    """3 contiguous hourly windows, readings every 60 s with 2 minutes of margin."""
    rng = np.random.default_rng(seed)
    base = 1_790_000_000.0 - 1_790_000_000.0 % HOUR
    out = []
    for _ in range(count):
        start = base + HOUR * float(rng.integers(0, 24 * 30))
        windows = np.array([[start + HOUR * k, start + HOUR * (k + 1)] for k in range(3)])
        ts = np.arange(start - 120.0 + rng.uniform(0.0, 60.0), start + 3 * HOUR + 120.0, 60.0)
        now = datetime.fromtimestamp(start + 2.5 * HOUR, UTC)
        out.append(QuantityItem(kind, ts, _values(kind, rng, ts.size), windows, 60.0, now))
    return out


def short_items(kind: ReadingType, count: int, seed: int = 2) -> list[QuantityItem]:
    """5 readings a minute apart around the edge of two 15-minute windows."""
    rng = np.random.default_rng(seed)
    base = 1_790_000_000.0 - 1_790_000_000.0 % 900.0
    out = []
    for _ in range(count):
        edge = base + 900.0 * float(rng.integers(1, 96 * 30))
        windows = np.array([[edge - 900.0, edge], [edge, edge + 900.0]])
        ts = edge - 150.0 + rng.uniform(0.0, 60.0) + 60.0 * np.arange(5)
        now = datetime.fromtimestamp(edge + 150.0, UTC)
        out.append(QuantityItem(kind, ts, _values(kind, rng, ts.size), windows, 60.0, now))
    return out


def _best(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _same(a: WindowQuantities, b: WindowQuantities) -> bool:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return False
    return len(a.reset_events) == len(b.reset_events)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quantities_many")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{args.items} items per row, best of {args.repeat}; µs per item")
    print(f"{'case':<8} {'type':<6} {'readings':>8} {'per item':>9} {'many':>7} {'ratio':>6} bulk")
    for case, build in (("hourly", hourly_items), ("short", short_items)):
        for kind in ReadingType:
            items = build(kind, args.items)
            single = _best(lambda items=items: [it.compute() for it in items], args.repeat)
            many = _best(lambda items=items: window_quantities_many_outcome(items), args.repeat)
            outcome = window_quantities_many_outcome(items)
            for it, got in zip(items, outcome.results, strict=True):
                if not isinstance(got, WindowQuantities) or not _same(got, it.compute()):
                    raise SystemExit(
                        f"{case} {kind.value}: a result differs from window_quantities"
                    )
            per, bulk = single / len(items) * 1e6, many / len(items) * 1e6
            print(
                f"{case:<8} {kind.value:<6} {items[0].ts.size:>8} {per:>9.1f} {bulk:>7.1f}"
                f" {per / bulk:>6.1f} {outcome.bulk.mean():.0%}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
