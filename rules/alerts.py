"""Alert rules (SPEC §6) as pure functions: window history in, desired alert state out.

Every function takes what it needs, including ``now``; none reads the clock or the database.
The engine asks each rule for a :class:`Verdict` per subject and the lifecycle
(``rules.lifecycle``) turns verdicts into firing, resolved and updated alerts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any


class Rule(StrEnum):
    imbalance = "imbalance"
    drift = "drift"
    meter_suspect = "meter_suspect"
    meter_stale = "meter_stale"
    meter_stuck = "meter_stuck"
    counter_reset = "counter_reset"
    negative_flow = "negative_flow"
    meter_spike = "meter_spike"
    rejections = "rejections"
    rules_error = "rules_error"  # always on: no settings


class Severity(StrEnum):
    warning = "warning"
    critical = "critical"


class Decision(StrEnum):
    fire = "fire"  # should be firing (fire it, or keep it firing and refresh its details)
    resolve = "resolve"  # should not be firing
    keep = "keep"  # not enough evidence either way: leave the alert as it is


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    severity: Severity = Severity.warning
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)


KEEP = Verdict(Decision.keep)


# -- configuration (defaults per SPEC §6, overridable per exchange or meter) ------------------


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
    # k = 1 σ, h = 6 σ: in-control run length ≈ 4·10⁵ windows (a false alarm per exchange in
    # about 45 years of hourly windows); a 1.5 σ bias is caught in about 12 windows.
    k: float = 1.0  # CUSUM allowance, in σ
    h: float = 6.0  # CUSUM decision limit, in σ
    windows: int = 336  # how many recent windows the CUSUM runs over


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
    Rule.imbalance: ImbalanceConfig,
    Rule.drift: DriftConfig,
    Rule.meter_suspect: SuspectConfig,
    Rule.meter_stale: StaleConfig,
    Rule.meter_stuck: StuckConfig,
    Rule.counter_reset: CounterResetConfig,
    Rule.negative_flow: NegativeFlowConfig,
    Rule.meter_spike: SpikeConfig,
    Rule.rejections: RejectionsConfig,
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


# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowResult:
    """One reconciled exchange window, as stored in ``exchange_windows``."""

    start: datetime
    end: datetime
    status: str  # ok | imbalance | incomplete | no_data | error
    sent: float | None
    received: float | None
    imbalance: float | None
    sigma: float | None
    z: float | None
    coverage: float


def _fmt(q: float | None, unit: str) -> str:
    if q is None or not math.isfinite(q):
        return "-"
    return f"{q:,.2f} {unit}"


def _window_details(w: WindowResult) -> dict[str, Any]:
    return {
        "window_start": w.start.isoformat(),
        "window_end": w.end.isoformat(),
        "sent": w.sent,
        "received": w.received,
        "imbalance": w.imbalance,
        "sigma": w.sigma,
        "z": w.z,
        "coverage": w.coverage,
        "status": w.status,
    }


def evaluate_imbalance(
    exchange_id: str,
    unit: str,
    windows: Sequence[WindowResult],
    firing: bool,
    cfg: ImbalanceConfig,
) -> Verdict:
    """Fire after ``fire_after`` consecutive imbalanced windows; resolve after ``clear_after``
    consecutive ok windows. Incomplete and empty windows are evidence of nothing."""
    if not cfg.enabled:
        return Verdict(Decision.resolve)
    decided = [w for w in windows if w.status in ("ok", "imbalance")]
    if not decided:
        return KEEP
    last = decided[-1]
    run_bad = 0
    for w in reversed(decided):
        if w.status != "imbalance":
            break
        run_bad += 1
    run_ok = 0
    for w in reversed(decided):
        if w.status != "ok":
            break
        run_ok += 1
    if run_bad >= cfg.fire_after or (firing and run_bad > 0):
        bad = decided[-run_bad:]
        worst = max(bad, key=lambda w: abs(w.z or 0.0))
        share = (
            abs(worst.imbalance or 0.0) / abs(worst.sent)
            if worst.sent not in (None, 0.0)
            else math.inf
        )
        severity = Severity.critical if share > cfg.critical_fraction else Severity.warning
        lost = "lost" if (last.imbalance or 0.0) > 0 else "gained"
        summary = (
            f"exchange {exchange_id}: {_fmt(abs(last.imbalance or 0.0), unit)} {lost} in the "
            f"window from {last.start:%Y-%m-%d %H:%M}Z (z = {last.z:+.1f}, "
            f"{run_bad} imbalanced windows in a row)"
        )
        return Verdict(
            Decision.fire,
            severity,
            summary,
            {
                **_window_details(last),
                "consecutive": run_bad,
                "share_of_sent": share if math.isfinite(share) else None,
            },
        )
    if firing and run_ok >= cfg.clear_after:
        return Verdict(Decision.resolve, details={"clean_windows": run_ok})
    if not firing:
        return Verdict(Decision.resolve)
    return KEEP


def evaluate_stale(
    meter_id: str,
    last_reading: datetime | None,
    interval_s: float | None,
    now: datetime,
    cfg: StaleConfig,
    *,
    watched_since: datetime | None = None,
) -> Verdict:
    """No reading for ``intervals`` × interval (or ``after_s``)."""
    if not cfg.enabled:
        return Verdict(Decision.resolve)
    limit = (
        cfg.after_s
        if cfg.after_s is not None
        else (cfg.intervals * interval_s if interval_s else None)
    )
    if limit is None:
        return Verdict(Decision.resolve)
    reference = last_reading or watched_since
    if reference is None:
        return KEEP
    age = (now - reference).total_seconds()
    if age > limit:
        last = f"last reading {last_reading:%Y-%m-%d %H:%M}Z" if last_reading else "no reading yet"
        return Verdict(
            Decision.fire,
            Severity.warning,
            f"meter {meter_id} stale for {_age(age)} ({last})",
            {
                "last_reading": last_reading.isoformat() if last_reading else None,
                "age_s": age,
                "limit_s": limit,
            },
        )
    return Verdict(Decision.resolve)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass(frozen=True)
class MeterWindow:
    """One meter's window, as stored in ``meter_windows``."""

    start: datetime
    end: datetime
    quantity: float | None
    coverage: float
    readings: int
    stuck: bool
    negatives: int
    resets: int


def evaluate_counter_reset(
    meter_id: str,
    resets: Sequence[tuple[datetime, float, float]],
    now: datetime,
    cfg: CounterResetConfig,
) -> Verdict:
    """A ``total`` register went down: fires, and resolves ``hold_s`` after the last reset."""
    if not cfg.enabled:
        return Verdict(Decision.resolve)
    recent = [r for r in resets if (now - r[0]).total_seconds() <= cfg.hold_s]
    if not recent:
        return Verdict(Decision.resolve)
    at, before, after = recent[-1]
    return Verdict(
        Decision.fire,
        Severity.warning,
        f"meter {meter_id} register went down at {at:%Y-%m-%d %H:%M}Z "
        f"({before:,.3f} → {after:,.3f}); counting continues from the new register",
        {"at": at.isoformat(), "before": before, "after": after, "count": len(recent)},
    )


def evaluate_rejections(
    partner_id: str, messages: int, rejected: int, cfg: RejectionsConfig
) -> Verdict:
    """More than ``fraction`` of a partner's messages rejected over the last hour."""
    if not cfg.enabled or messages < cfg.min_messages:
        return Verdict(Decision.resolve)
    share = rejected / messages
    if share > cfg.fraction:
        return Verdict(
            Decision.fire,
            Severity.warning,
            f"partner {partner_id}: {rejected} of {messages} messages rejected in the last "
            f"hour ({share:.1%})",
            {"messages": messages, "rejected": rejected, "share": share},
        )
    return Verdict(Decision.resolve)


@dataclass(frozen=True)
class WindowFailure:
    """A window of an exchange or meter that could not be computed, and why; ``computation``
    names what failed when it is not the subject's own window (a network reconciliation)."""

    start: datetime
    end: datetime
    cause: str
    computation: str = ""


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def evaluate_rules_error(
    kind: str, subject: str, failures: Sequence[WindowFailure], *, listed: int = 20
) -> Verdict:
    """``rules_error``: fires while some window of the subject stands as not computed (the
    earliest one is named), resolves once every one of them has been computed again."""
    if not failures:
        return Verdict(Decision.resolve)
    ordered = sorted(failures, key=lambda f: (f.start, f.computation))
    first = ordered[0]
    what = f"the {first.computation} for" if first.computation else "the"
    more = f"; {len(ordered) - 1} more failed" if len(ordered) > 1 else ""
    return Verdict(
        Decision.fire,
        Severity.warning,
        f"{kind} {subject}: {what} window from {first.start:%Y-%m-%d %H:%M}Z could not be "
        f"computed: {_one_line(first.cause, 200)}{more}",
        {
            "window_start": first.start.isoformat(),
            "window_end": first.end.isoformat(),
            "error": first.cause,
            "computation": first.computation or kind,
            "failed_windows": len(ordered),
            "windows": [
                {
                    "window_start": f.start.isoformat(),
                    "window_end": f.end.isoformat(),
                    "computation": f.computation or kind,
                    "error": f.cause,
                }
                for f in ordered[:listed]
            ],
        },
    )


# -- series: one verdict per window, in one pass (the engine replays history with these) -----


def imbalance_series(
    exchange_id: str,
    unit: str,
    windows: Sequence[WindowResult],
    firing: bool,
    cfg: ImbalanceConfig,
) -> list[Verdict]:
    """The verdict of :func:`evaluate_imbalance` after each window, with the alert's state
    carried along (so hysteresis holds across the series). O(len(windows))."""
    out: list[Verdict] = []
    tail: list[WindowResult] = []
    keep = max(cfg.fire_after, cfg.clear_after) + 1
    for w in windows:
        if w.status in ("ok", "imbalance"):
            tail.append(w)
            if len(tail) > 4 * keep:
                del tail[: len(tail) - keep]
        verdict = evaluate_imbalance(exchange_id, unit, tail, firing, cfg)
        if verdict.decision == Decision.fire:
            firing = True
        elif verdict.decision == Decision.resolve:
            firing = False
        out.append(verdict)
    return out


def drift_series(
    exchange_id: str, windows: Sequence[WindowResult], cfg: DriftConfig
) -> list[Verdict]:
    """The drift verdict after each window, from one continuous tabular CUSUM."""
    out: list[Verdict] = []
    if not cfg.enabled:
        return [Verdict(Decision.resolve) for _ in windows]
    hi = lo = 0.0
    hi_since: WindowResult | None = None
    lo_since: WindowResult | None = None
    hi_n = lo_n = 0
    hi_sum = lo_sum = 0.0
    seen = False
    firing = False
    for w in windows:
        if w.status in ("ok", "imbalance") and w.z is not None and math.isfinite(w.z):
            seen = True
            z = max(-10.0, min(10.0, w.z))  # one wild window is not drift
            hi = max(0.0, hi + z - cfg.k)
            lo = max(0.0, lo - z - cfg.k)
            if hi == 0.0:
                hi_since, hi_n, hi_sum = None, 0, 0.0
            else:
                hi_since = hi_since or w
                hi_n += 1
                hi_sum += z
            if lo == 0.0:
                lo_since, lo_n, lo_sum = None, 0, 0.0
            else:
                lo_since = lo_since or w
                lo_n += 1
                lo_sum += z
        if not seen:
            out.append(KEEP)
            continue
        # hysteresis: once firing, it stays so until the CUSUM is back under half the limit
        limit = cfg.h / 2 if firing else cfg.h
        if hi > limit or lo > limit:
            firing = True
            upper = hi >= lo
            value = hi if upper else lo
            since = hi_since if upper else lo_since
            n = hi_n if upper else lo_n
            mean_z = (hi_sum if upper else lo_sum) / max(n, 1)
            direction = "less received than expected" if upper else "more received than sent"
            start = since.start if since else w.start
            out.append(
                Verdict(
                    Decision.fire,
                    Severity.warning,
                    f"exchange {exchange_id}: slow one-sided imbalance ({direction}), CUSUM "
                    f"{value:.1f} > {cfg.h:g} since {start:%Y-%m-%d %H:%M}Z, mean z {mean_z:+.2f}",
                    {
                        "cusum": value,
                        "limit": cfg.h,
                        "k": cfg.k,
                        "since": start.isoformat(),
                        "mean_z": mean_z,
                        "windows": n,
                    },
                )
            )
        else:
            firing = False
            out.append(Verdict(Decision.resolve))
    return out


def flag_series(
    flags: Sequence[bool],
    fire_after: int,
    clear_after: int,
    fire: Callable[[int, int], Verdict],
) -> list[Verdict]:
    """Debounce a per-window condition: fire after ``fire_after`` consecutive true windows,
    resolve after ``clear_after`` consecutive false ones; ``fire(i, run)`` builds the verdict
    at window ``i`` with the current run of true windows."""
    out: list[Verdict] = []
    firing = False
    run = clean = 0
    for i, flag in enumerate(flags):
        if flag:
            run += 1
            clean = 0
        else:
            clean += 1
            run = 0
        if run and (firing or run >= fire_after):
            firing = True
            out.append(fire(i, run))
        elif firing and clean >= clear_after:
            firing = False
            out.append(Verdict(Decision.resolve))
        elif not firing:
            out.append(Verdict(Decision.resolve))
        else:
            out.append(KEEP)
    return out


# -- statement_held: a month due for issue waits for its data ---------------------------------

STATEMENT_HELD = "statement_held"  # judged by rules.issue when a month falls due, not per window


@dataclass(frozen=True)
class LineShortfall:
    """A statement line whose coverage is below the network's ``statements.min_coverage``."""

    exchange: str
    role: str
    coverage: float  # 0..1, as the statement prints it
    windows: int


def evaluate_statement_held(
    partner_id: str,
    month: str,
    short: Sequence[LineShortfall],
    pending: int,
    min_coverage: float,
) -> Verdict:
    """Fire while a partner's statement for a month that is due has lines short of data
    (``short``); keep the alert as it is while only windows of the month still wait to be
    reconciled (``pending``: the figures are not final yet); resolve otherwise. Issuing the
    month resolves it too."""
    if not short:
        return KEEP if pending else Verdict(Decision.resolve)
    try:
        name = datetime.strptime(month, "%Y-%m").strftime("%B %Y")
    except ValueError:
        name = month
    shown = ", ".join(
        f"{s.exchange} {s.coverage:.1%}" if s.windows else f"{s.exchange} no data"
        for s in short[:5]
    )
    more = f" and {len(short) - 5} more" if len(short) > 5 else ""
    lines = "1 line" if len(short) == 1 else f"{len(short)} lines"
    waiting = f"; {pending} windows of the month wait to be reconciled" if pending else ""
    return Verdict(
        Decision.fire,
        Severity.warning,
        f"statement of {partner_id} for {name} held: {lines} short of data ({shown}{more};"
        f" {min_coverage * 100:g}% needed){waiting}",
        {
            "partner": partner_id,
            "month": month,
            "min_coverage": min_coverage,
            "lines": [
                {
                    "exchange": s.exchange,
                    "role": s.role,
                    "coverage": s.coverage,
                    "windows": s.windows,
                }
                for s in short
            ],
            "pending_windows": pending,
        },
    )
