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


# What each rule and each of its settings means, in the words of the network-file reference
# (``core.network_docs`` renders them beside the defaults above; every setting needs one).
RULE_DOCS: dict[str, str] = {
    "imbalance": "an exchange loses (or gains) more than its meters' uncertainty explains",
    "drift": "a slow bias between the two ends of an exchange, summed window after window",
    "meter_suspect": "the reconciliation of a balance or exchange names this meter as the one"
    " that does not fit",
    "meter_stale": "no reading for too long",
    "meter_stuck": "a register or rate does not move for a whole window while the other side"
    " of its exchange flows",
    "counter_reset": "a `total` register went down",
    "negative_flow": "a rate or delta below zero",
    "meter_spike": "a single reading far off its neighbours (it is left out of the quantity)",
    "rejections": "too many of a partner's messages rejected",
}

SETTING_DOCS: dict[tuple[str, str], str] = {
    ("imbalance", "enabled"): "`false` (or `imbalance: off`) turns the rule off",
    ("imbalance", "z"): "a window is imbalanced when its \\|z\\| is above this (the window"
    " status uses it too)",
    ("imbalance", "fire_after"): "imbalanced windows in a row, on the same side, to fire",
    ("imbalance", "clear_after"): "clean windows in a row to resolve",
    ("imbalance", "critical_fraction"): "severity is `critical` when \\|d\\| is above this"
    " share of what was sent",
    ("drift", "enabled"): "`false` (or `drift: off`) turns the rule off",
    ("drift", "k"): "CUSUM allowance, in σ: biases smaller than this are not summed",
    ("drift", "h"): "CUSUM decision limit, in σ: the rule fires when the sum crosses it",
    ("meter_suspect", "enabled"): "`false` (or `meter_suspect: off`) turns the rule off",
    ("meter_suspect", "fire_after"): "windows in a row that name the meter, to fire",
    ("meter_suspect", "clear_after"): "windows in a row that do not, to resolve",
    ("meter_stale", "enabled"): "`false` (or `meter_stale: off`) turns the rule off",
    ("meter_stale", "intervals"): "stale after this many × the meter's `interval` without"
    " a reading",
    ("meter_stale", "after_s"): "or stale after this many seconds; a meter without an"
    " `interval` (a weighbridge) is watched only when this is set",
    ("meter_stuck", "enabled"): "`false` (or `meter_stuck: off`) turns the rule off",
    ("meter_stuck", "min_counterpart_share"): "the other side counts as flowing above this"
    " share of its usual (median) flow",
    ("counter_reset", "enabled"): "`false` (or `counter_reset: off`) turns the rule off",
    ("counter_reset", "hold_s"): "stays firing this many seconds after the last reset",
    ("negative_flow", "enabled"): "`false` (or `negative_flow: off`) turns the rule off",
    ("negative_flow", "clear_after"): "windows without a negative value to resolve",
    ("meter_spike", "enabled"): "`false` (or `meter_spike: off`) turns the rule off",
    ("meter_spike", "clear_after"): "windows without a spike to resolve",
    ("rejections", "enabled"): "`false` turns the rule off",
    ("rejections", "fraction"): "share of a partner's messages rejected over the last hour",
    ("rejections", "min_messages"): "fewest messages in that hour for the rule to judge",
}
