"""The settings of each alert rule, as a network file may override them per exchange or meter:
their defaults, and ``rule_config`` checking an override. The network model validates the file
with them; the rules engine evaluates with them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ImbalanceConfig:
    enabled: bool = True
    z: float = 3.0  # |z| above this is an imbalanced window (the window status uses it too)
    fire_after: int = 2  # consecutive imbalanced windows to fire
    clear_after: int = 2  # consecutive clean windows to resolve
    critical_fraction: float = 0.10  # |d| above this share of S is critical


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = True
    # k = 0.25 σ, h = 28 σ: see ``drift_series`` for how they were chosen (a false alarm per
    # exchange in about a thousand years of hourly windows; a meter drifting 3 % a month is
    # caught when it is 0.85 % off on 1 % meters, 1.2–1.4 % on 1.7–2 % meters, median).
    k: float = 0.25  # CUSUM allowance, in σ
    h: float = 28.0  # CUSUM decision limit, in σ


@dataclass(frozen=True)
class SuspectConfig:
    # The global test fails by chance in α = 5 % of windows and then names some meter:
    # three windows in a row keep chance out (≈ 10⁻⁷ per meter and window).
    enabled: bool = True
    fire_after: int = 3
    clear_after: int = 3


@dataclass(frozen=True)
class StaleConfig:
    enabled: bool = True
    intervals: float = 3.0  # no reading for this many × interval
    after_s: float | None = None  # or an explicit age (delta meters have no interval)


@dataclass(frozen=True)
class StuckConfig:
    enabled: bool = True
    min_counterpart_share: float = 0.05  # counterpart flow above this share of its usual flow


@dataclass(frozen=True)
class CounterResetConfig:
    enabled: bool = True
    hold_s: float = 86400.0  # stays firing this long after the last reset


@dataclass(frozen=True)
class NegativeFlowConfig:
    enabled: bool = True
    clear_after: int = 1


@dataclass(frozen=True)
class SpikeConfig:
    enabled: bool = True
    clear_after: int = 1


@dataclass(frozen=True)
class RejectionsConfig:
    enabled: bool = True
    fraction: float = 0.01
    min_messages: int = 20


RULE_CONFIG: dict[str, type] = {
    "imbalance": ImbalanceConfig,
    "drift": DriftConfig,
    "meter_suspect": SuspectConfig,
    "meter_stale": StaleConfig,
    "meter_stuck": StuckConfig,
    "counter_reset": CounterResetConfig,
    "negative_flow": NegativeFlowConfig,
    "meter_spike": SpikeConfig,
    "rejections": RejectionsConfig,
}


def rule_config(rule: str, overrides: object) -> Any:
    """The rule's config with overrides applied; raises ValueError naming a bad key or value."""
    cls = RULE_CONFIG[rule]
    if overrides is False or overrides == "off":
        return cls(enabled=False)
    if overrides is None or overrides == {}:
        return cls()
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{rule}: overrides must be a mapping (or `off`)")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{rule}.{key}: unknown setting (known: {', '.join(known)})")
        default = getattr(cls(), name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{rule}.{key}: must be true or false")
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{rule}.{key}: must be a whole number ≥ 1")
        else:
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{rule}.{key}: must be a non-negative number")
            value = float(value)
        values[name] = value
    return cls(**values)
