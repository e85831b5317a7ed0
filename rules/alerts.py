"""Alert rules as pure functions: window history in, desired alert state out.

Every function takes what it needs, including ``now``; none reads the clock or the database.
The engine asks each rule for a :class:`Verdict` per subject and the lifecycle
(``rules.lifecycle``) turns verdicts into firing, resolved and updated alerts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any

from core.rule_settings import (
    CounterResetConfig,
    DriftConfig,
    ImbalanceConfig,
    RejectionsConfig,
    StaleConfig,
)
from core.windows import local_text


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
    """What a rule wants after a window. ``at`` is the instant the condition began (for a
    ``fire``) or ended (for a ``resolve``) when the rule knows it better than the end of the
    window in which it was seen: the alert's ``started_at`` or ``resolved_at``."""

    decision: Decision
    severity: Severity = Severity.warning
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None


KEEP = Verdict(Decision.keep)


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


def _when(ts: datetime, tz: tzinfo) -> str:
    """An instant in a summary: in the network's time zone with its offset (``tz``)."""
    return local_text(ts, tz)


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
    *,
    tz: tzinfo = UTC,
) -> Verdict:
    """Fire after ``fire_after`` consecutive imbalanced windows on the same side (all lost,
    or all gained); resolve after ``clear_after`` consecutive ok windows. Incomplete and
    empty windows are evidence of nothing.

    Same side: a loss or a bias is one-sided, while a quantity counted in the wrong one of
    two adjacent windows (or chance) swings d from one sign to the other; two such windows
    sum to nothing and are no episode. Once firing, any imbalanced window keeps it firing."""
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
    run_side = _same_side_run(decided)
    run_ok = 0
    for w in reversed(decided):
        if w.status != "ok":
            break
        run_ok += 1
    if run_side >= cfg.fire_after or (firing and run_bad > 0):
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
            f"window from {_when(last.start, tz)} (z = {last.z:+.1f}, "
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


def stale_limit(interval_s: float | None, cfg: StaleConfig) -> float | None:
    """Seconds without a reading after which a meter is stale (None: never judged)."""
    if cfg.after_s is not None:
        return cfg.after_s
    return cfg.intervals * interval_s if interval_s else None


def evaluate_stale(
    meter_id: str,
    last_reading: datetime | None,
    interval_s: float | None,
    now: datetime,
    cfg: StaleConfig,
    *,
    watched_since: datetime | None = None,
    tz: tzinfo = UTC,
) -> Verdict:
    """No reading for ``intervals`` × interval (or ``after_s``). The condition begins at the
    last reading plus that tolerance (it ends at the first reading after the silence, which
    the caller knows, not this function)."""
    if not cfg.enabled:
        return Verdict(Decision.resolve)
    limit = stale_limit(interval_s, cfg)
    if limit is None:
        return Verdict(Decision.resolve)
    reference = last_reading or watched_since
    if reference is None:
        return KEEP
    age = (now - reference).total_seconds()
    if age > limit:
        last = f"last reading {_when(last_reading, tz)}" if last_reading else "no reading yet"
        return Verdict(
            Decision.fire,
            Severity.warning,
            f"meter {meter_id} stale for {_age(age)} ({last})",
            {
                "last_reading": last_reading.isoformat() if last_reading else None,
                "age_s": age,
                "limit_s": limit,
            },
            at=reference + timedelta(seconds=limit),
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
    *,
    tz: tzinfo = UTC,
) -> Verdict:
    """A ``total`` register went down: fires at the reset's instant (the first of a series of
    resets each within ``hold_s`` of the one before), and resolves ``hold_s`` after the last."""
    if not cfg.enabled:
        return Verdict(Decision.resolve)
    recent = [r for r in resets if (now - r[0]).total_seconds() <= cfg.hold_s]
    if not recent:
        ended = resets[-1][0] + timedelta(seconds=cfg.hold_s) if resets else None
        return Verdict(Decision.resolve, at=ended)
    at, before, after = recent[-1]
    first = len(resets) - 1
    while first > 0 and (resets[first][0] - resets[first - 1][0]).total_seconds() <= cfg.hold_s:
        first -= 1
    return Verdict(
        Decision.fire,
        Severity.warning,
        f"meter {meter_id} register went down at {_when(at, tz)} "
        f"({before:,.3f} → {after:,.3f}); counting continues from the new register",
        {"at": at.isoformat(), "before": before, "after": after, "count": len(recent)},
        at=resets[first][0],
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
    kind: str,
    subject: str,
    failures: Sequence[WindowFailure],
    *,
    listed: int = 20,
    tz: tzinfo = UTC,
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
        f"{kind} {subject}: {what} window from {_when(first.start, tz)} could not be "
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


def _side(w: WindowResult) -> bool:
    return (w.imbalance if w.imbalance is not None else (w.z or 0.0)) >= 0.0


def _same_side_run(decided: Sequence[WindowResult]) -> int:
    """How many of the last windows are imbalanced on the same side as the last one."""
    if not decided or decided[-1].status != "imbalance":
        return 0
    side = _side(decided[-1])
    run = 0
    for w in reversed(decided):
        if w.status != "imbalance" or _side(w) != side:
            break
        run += 1
    return run


def imbalance_series(
    exchange_id: str,
    unit: str,
    windows: Sequence[WindowResult],
    firing: bool,
    cfg: ImbalanceConfig,
    *,
    tz: tzinfo = UTC,
) -> list[Verdict]:
    """The verdict of :func:`evaluate_imbalance` after each window, with the alert's state
    carried along (so hysteresis holds across the series). O(len(windows)).

    An episode starts at the start of its first imbalanced window and ends at the start of
    the first ``ok`` window of the clean run that resolves it (the verdicts' ``at``)."""
    out: list[Verdict] = []
    tail: list[WindowResult] = []
    keep = max(cfg.fire_after, cfg.clear_after) + 1
    run_start: datetime | None = None  # first window of the current one-sided imbalanced run
    run_side = True
    ok_start: datetime | None = None  # first window of the current run of ok ones
    episode: datetime | None = None
    for w in windows:
        if w.status in ("ok", "imbalance"):
            tail.append(w)
            if len(tail) > 4 * keep:
                del tail[: len(tail) - keep]
            if w.status == "imbalance":
                if run_start is None or _side(w) != run_side:
                    run_start = w.start  # a run on one side starts here
                run_side = _side(w)
                ok_start = None
            else:
                ok_start = ok_start or w.start
                run_start = None
        verdict = evaluate_imbalance(exchange_id, unit, tail, firing, cfg, tz=tz)
        if verdict.decision == Decision.fire:
            if not firing or episode is None:
                episode = run_start or w.start
            verdict = replace(verdict, at=episode)
            firing = True
        elif verdict.decision == Decision.resolve:
            if firing:
                verdict = replace(verdict, at=ok_start)
            firing = False
            episode = None
        out.append(verdict)
    return out


@dataclass(frozen=True)
class EpisodeMark:
    """Where an :func:`imbalance_series` stands after one window."""

    under_way: bool  # an imbalance episode is under way (the alert fires, or would)
    ended: bool = False  # an episode was resolved at this window …
    at: datetime | None = None  # … and ended at this instant (when known)


def imbalance_episodes(verdicts: Sequence[Verdict]) -> list[EpisodeMark]:
    """The episodes of an :func:`imbalance_series`, window by window."""
    out: list[EpisodeMark] = []
    firing = False
    for v in verdicts:
        if v.decision == Decision.fire:
            firing = True
            out.append(EpisodeMark(True))
        elif v.decision == Decision.resolve and firing:
            firing = False
            out.append(EpisodeMark(False, True, v.at))
        else:
            if v.decision == Decision.resolve:
                firing = False
            out.append(EpisodeMark(firing))
    return out


# -- drift --------------------------------------------------------------------------------------

DRIFT_CLAMP = 4.0
"""|z| of one window is clamped to this before it enters the drift CUSUM: a single wild window
is the imbalance rule's business (or a glitch), not evidence of a slow bias."""

DRIFT_RESOLVE_ARL = 20_000.0
"""While drift fires, a bias that is still there is taken for gone by chance about once in
this many windows (about two years of hourly windows)."""

_SIEGMUND = 1.166  # Siegmund's correction of a CUSUM's limit for a normal, in σ


@dataclass
class DriftState:
    """The drift statistic carried from one window to the next (stored per exchange and window
    so that every pass, live or backfill, continues exactly where the last one stopped).

    ``hi``/``lo`` are the upper and lower CUSUMs; ``*_since`` the start of the first window of
    their current run (since they last left zero), ``*_n``/``*_sum`` the windows and Σz of that
    run. While it fires (``side`` +1 for less received than expected, −1 for more), ``bias`` is
    the mean z of the run that fired it, ``back`` the CUSUM looking for that bias to be gone
    and ``back_since`` the start of that CUSUM's run."""

    hi: float = 0.0
    lo: float = 0.0
    hi_since: datetime | None = None
    lo_since: datetime | None = None
    hi_n: int = 0
    lo_n: int = 0
    hi_sum: float = 0.0
    lo_sum: float = 0.0
    side: int = 0
    since: datetime | None = None
    bias: float = 0.0
    back: float = 0.0
    back_since: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: (v.isoformat() if isinstance(v, datetime) else v)
            for f in fields(self)
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftState:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key.endswith("since") or key == "since":
                value = datetime.fromisoformat(value) if value else None
            values[key] = value
        return cls(**values)


def resolve_limit(bias: float) -> float:
    """The limit of the CUSUM that looks for a bias of ``bias`` σ to be gone: allowance
    bias/2, limit from Siegmund's approximation of the average run length,
    ARL ≈ exp(2kb)/(2k²) with b = limit + 1.166, set to ``DRIFT_RESOLVE_ARL``."""
    k = max(bias, 0.05) / 2
    b = math.log(max(DRIFT_RESOLVE_ARL * 2 * k * k, math.e)) / (2 * k)
    return max(b - _SIEGMUND, 1.0)


def drift_series(
    exchange_id: str,
    windows: Sequence[WindowResult],
    cfg: DriftConfig,
    *,
    state: DriftState | None = None,
    episodes: Sequence[EpisodeMark] | None = None,
    tz: tzinfo = UTC,
) -> tuple[list[Verdict], list[DriftState]]:
    """The drift verdict and the statistic after each window, continuing from ``state`` (the
    statistic after the window before ``windows[0]``; None: from zero).

    The detector. A two-sided tabular CUSUM (Page 1954; Montgomery, *Introduction to
    Statistical Quality Control*, ch. 9) of the windows' z, each clamped to ±``DRIFT_CLAMP``:
    ``hi = max(0, hi + z − k)``, ``lo = max(0, lo − z − k)``, over the decided windows (``ok``
    and ``imbalance``; incomplete and empty ones are skipped). It fires when one of them
    exceeds ``h``; the alert starts at the first window of that CUSUM's run (when it last left
    zero).

    Why k = 0.25 and h = 28. An exchange's z is N(0, 1) when its meters are as good as their
    stated uncertainty; the simulator draws each meter's window error from exactly that, and
    a simulated month of the example network gives hourly z with a standard deviation of
    0.94–1.04 and no correlation between consecutive windows (|r₁| < 0.1). A bias b on one
    meter moves z by b/σ_d, σ_d the relative uncertainty of d: with two meters of u that is
    b/(u·√2) — a meter 1.5 % off moves z by 1.06 on 1 % meters, by 0.62 on the example's heat
    meters (1.7 % and 1.8 %) and by 0.53 on 2 % meters. A meter drifting 3 % a month is a
    ramp of z: being alerted before it is 1.5 % off means catching a ramp that reaches
    0.5–1 σ in 360 windows. For a ramp the CUSUM's allowance should be small (it wastes k per
    window until the ramp exceeds it); the limit then follows from the false alarms one
    accepts. Siegmund's approximation of the in-control average run length,
    ARL₀ ≈ (e^{2kb} − 2kb − 1)/(2k²) per side with b = h + 1.166, gives for k = 0.25, h = 28
    about 8.6·10⁶ windows for both sides: a false alarm per hourly exchange in about a
    thousand years, one in some 80 years among the example's twelve hourly exchanges (3,000
    simulated clean years raised one). A Monte Carlo of the ramps
    (``python -m benchmarks.drift_calibration``) then puts the meter's error when drift fires
    at, median (90th percentile): 3 %/month 0.85 % (1.0 %) on 1 % meters, 1.23 % (1.45 %) on
    the heat meters, 1.37 % (1.62 %) on two 2 % meters; 6 %/month 1.1 %, 1.5 %, 1.7 %. A
    step of 1 σ takes 37 windows, of 2 σ 17. Other choices, measured the same way: k = 0.5,
    h = 14 (ARL₀ 400 years) is quicker on steps (26 windows for 1 σ) but reaches 1.5 % on
    the heat meters before it fires (median); k = 0.1, h = 63 (same ARL₀) is slower on
    everything but the slowest ramps. At an equal false-alarm rate a CUSUM of daily sums of
    z is the same statistic looked at once a day, a little later on ramps and up to a day
    later on steps; an EWMA of z (λ = 0.01) with a control limit is about 5 % earlier on
    ramps but later on steps (1 σ: 32 windows against 25) — the CUSUM is kept, as the
    product contract names it.

    Episodes. While an imbalance episode is under way on the exchange (``episodes``: its
    :func:`imbalance_episodes`), the bias is explained by it: drift does not start firing
    then, and once that episode is resolved the statistic restarts from zero, so a leak does
    not leave drift behind for days. A drift that was already firing when the imbalance
    began (a meter drifting so far that some windows are imbalanced) is its own episode and
    carries on. Drift's own episode ends when a second CUSUM, started when it fired, finds
    the bias gone: it sums bias/2 − z (for the side that fired, ``bias`` the mean z of the
    run that fired it) and resolves above :func:`resolve_limit` — a couple of windows for a
    leak-sized bias, one to three days for one at the limit of detection. The alert then ends
    where that CUSUM's run began, and the statistic restarts from zero.
    """
    if not cfg.enabled:
        return [Verdict(Decision.resolve) for _ in windows], [DriftState() for _ in windows]
    st = replace(state) if state is not None else DriftState()
    seen = state is not None
    verdicts: list[Verdict] = []
    states: list[DriftState] = []
    for i, w in enumerate(windows):
        mark = episodes[i] if episodes is not None else EpisodeMark(False)
        if mark.ended and not st.side:
            # the imbalance episode that drove the statistic is over: start again from zero
            st = DriftState()
            verdicts.append(Verdict(Decision.resolve) if seen else KEEP)
            states.append(replace(st))
            continue
        if w.status in ("ok", "imbalance") and w.z is not None and math.isfinite(w.z):
            seen = True
            z = max(-DRIFT_CLAMP, min(DRIFT_CLAMP, w.z))
            st.hi = max(0.0, st.hi + z - cfg.k)
            st.lo = max(0.0, st.lo - z - cfg.k)
            if st.hi == 0.0:
                st.hi_since, st.hi_n, st.hi_sum = None, 0, 0.0
            else:
                st.hi_since = st.hi_since or w.start
                st.hi_n += 1
                st.hi_sum += z
            if st.lo == 0.0:
                st.lo_since, st.lo_n, st.lo_sum = None, 0, 0.0
            else:
                st.lo_since = st.lo_since or w.start
                st.lo_n += 1
                st.lo_sum -= z
            if st.side:
                st.back = max(0.0, st.back + st.bias / 2 - st.side * z)
                if st.back == 0.0:
                    st.back_since = None
                else:
                    st.back_since = st.back_since or w.start
                if st.back > resolve_limit(st.bias):
                    ended = st.back_since or w.start
                    st = DriftState()
                    verdicts.append(Verdict(Decision.resolve, at=ended))
                    states.append(replace(st))
                    continue
        if not seen:
            verdicts.append(KEEP)
        elif st.side:
            verdicts.append(_drift_fire(exchange_id, st, cfg, tz))
        elif st.hi > cfg.h or st.lo > cfg.h:
            if mark.under_way:
                verdicts.append(KEEP)  # an imbalance episode explains the bias
            else:
                upper = st.hi >= st.lo
                st.side = 1 if upper else -1
                st.since = (st.hi_since if upper else st.lo_since) or w.start
                n, total = (st.hi_n, st.hi_sum) if upper else (st.lo_n, st.lo_sum)
                st.bias = total / max(n, 1)
                st.back, st.back_since = 0.0, None
                verdicts.append(_drift_fire(exchange_id, st, cfg, tz))
        else:
            verdicts.append(Verdict(Decision.resolve))
        states.append(replace(st))
    return verdicts, states


def _drift_fire(exchange_id: str, st: DriftState, cfg: DriftConfig, tz: tzinfo) -> Verdict:
    upper = st.side > 0
    value = st.hi if upper else st.lo
    direction = "less received than expected" if upper else "more received than sent"
    since = _when(st.since, tz) if st.since else "the first window"
    return Verdict(
        Decision.fire,
        Severity.warning,
        f"exchange {exchange_id}: slow one-sided imbalance ({direction}) since "
        f"{since}, mean z {st.side * st.bias:+.2f} (CUSUM {value:.1f}, "
        f"limit {cfg.h:g})",
        {
            "cusum": value,
            "limit": cfg.h,
            "k": cfg.k,
            "since": st.since.isoformat() if st.since else None,
            "mean_z": st.side * st.bias,
            "windows": st.hi_n if upper else st.lo_n,
        },
        at=st.since,
    )


_RESOLVE = Verdict(Decision.resolve)


def flag_series(
    flags: Sequence[bool],
    fire_after: int,
    clear_after: int,
    fire: Callable[[int, int], Verdict],
    starts: Sequence[datetime] | None = None,
) -> list[Verdict]:
    """Debounce a per-window condition: fire after ``fire_after`` consecutive true windows,
    resolve after ``clear_after`` consecutive false ones; ``fire(i, run)`` builds the verdict
    at window ``i`` with the current run of true windows. With the windows' ``starts`` the
    condition begins at the start of the first true window of the run that fires (unless
    ``fire`` says better) and ends at the start of the first false window of the run that
    resolves it."""
    if not any(flags):  # the usual case: every verdict a plain resolve (one frozen instance)
        return [_RESOLVE] * len(flags)
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
            verdict = fire(i, run)
            if not firing and starts is not None and verdict.at is None:
                verdict = replace(verdict, at=starts[i - run + 1])
            firing = True
            out.append(verdict)
        elif firing and clean >= clear_after:
            firing = False
            ended = starts[i - clean + 1] if starts is not None else None
            out.append(Verdict(Decision.resolve, at=ended))
        elif not firing:
            out.append(Verdict(Decision.resolve))
        else:
            out.append(KEEP)
    return out


# -- statement_held: a month due for issue waits for its data ---------------------------------

STATEMENT_HELD = (
    "statement_held"  # judged by statements.issue when a month falls due, not per window
)

ALERT_RULES = frozenset({*(r.value for r in Rule), STATEMENT_HELD})
"""Every rule an alert can have."""


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
