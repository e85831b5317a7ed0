"""What one pass of the rules engine counts (:class:`Stats`), and the small helpers that its
stages (:mod:`rules.engine`) and the alert replay (:mod:`rules.replay`) share."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.windows import window_bounds as _window_bounds

# window_bounds is pure and the engine asks for the same few thousand windows over and over
# (every meter window of a replay, every subject it marks): memoised, it costs a dict lookup.
window_bounds = functools.lru_cache(maxsize=1 << 16)(_window_bounds)


@dataclass
class Stats:
    meter_windows: int = 0
    exchange_windows: int = 0
    reconciliations: int = 0
    subjects: int = 0
    deferred: int = 0
    statements: int = 0
    alerts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    touched: set[int] = field(default_factory=set)  # alerts fired, resolved or changed
    # (kind, subject, window start) → cause of every window whose computation failed
    failures: dict[tuple[str, str, datetime], str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Distinct windows (meter, exchange, reconciliation) that could not be computed."""
        return len(self.failures)

    def add(self, other: Stats) -> None:
        self.meter_windows += other.meter_windows
        self.exchange_windows += other.exchange_windows
        self.reconciliations += other.reconciliations
        self.subjects += other.subjects
        self.deferred += other.deferred
        self.statements += other.statements
        for key, n in other.alerts.items():
            self.alerts[key] += n
        self.failures.update(other.failures)
        self.touched |= other.touched


def _dt(epoch: float) -> datetime | None:
    return None if not math.isfinite(epoch) else datetime.fromtimestamp(epoch, UTC)
