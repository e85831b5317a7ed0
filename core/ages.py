"""An age that keeps growing between measurements, for Prometheus gauges.

A backlog's age ("how long has the oldest waiting item waited") is measured now and then by a
query; between measurements, and when a measurement cannot be made (the database is gone, the
measuring loop is stuck), the gauge must not freeze at its last value: that would hide the
very stall it is there to show.  :class:`Age` keeps the last measured age and the monotonic
instant it was measured, and reads as that age plus the time since, or 0 when nothing waited.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Age:
    """``set(age)`` after each measurement; ``value()`` (for ``Gauge.set_function``) is the
    age now.  ``clock`` is a monotonic clock in seconds (replaceable in tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._age: float | None = None
        self._at = 0.0

    def set(self, age_seconds: float | None) -> None:
        """The age just measured; ``None`` (or a negative age, clocks apart) when none waits."""
        self._age = None if age_seconds is None else max(0.0, float(age_seconds))
        self._at = self._clock()

    def value(self) -> float:
        if self._age is None:
            return 0.0
        return self._age + max(0.0, self._clock() - self._at)
