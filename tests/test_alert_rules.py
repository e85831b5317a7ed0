"""The alert rules as pure functions: the drift statistic (carried across passes, restarted
after the episode that drove it, resolved once the bias is gone), the instants verdicts
carry, and the grouping of alerts into incidents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.rule_settings import CounterResetConfig, StaleConfig
from rules.alerts import (
    Decision,
    DriftConfig,
    DriftState,
    ImbalanceConfig,
    Verdict,
    WindowResult,
    drift_series,
    evaluate_counter_reset,
    evaluate_stale,
    flag_series,
    imbalance_episodes,
    imbalance_series,
    resolve_limit,
)
from rules.incidents import GAP, Member, plan
from rules.quantities import outlier_times, repeat_run

T0 = datetime(2026, 10, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _windows(zs: list[float], start: datetime = T0) -> list[WindowResult]:
    out = []
    for i, z in enumerate(zs):
        status = "imbalance" if abs(z) > 3 else "ok"
        out.append(
            WindowResult(
                start + i * HOUR,
                start + (i + 1) * HOUR,
                status,
                100.0,
                100.0 - z,
                z,
                1.0,
                z,
                1.0,
            )
        )
    return out


def _noise(n: int, seed: int, bias: float = 0.0) -> list[float]:
    return list(np.random.default_rng(seed).standard_normal(n) + bias)


def _fired(verdicts: list[Verdict]) -> list[int]:
    """Indexes at which the series turns to firing."""
    out, firing = [], False
    for i, v in enumerate(verdicts):
        if v.decision == Decision.fire and not firing:
            out.append(i)
        if v.decision == Decision.fire:
            firing = True
        elif v.decision == Decision.resolve:
            firing = False
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.lists(st.integers(1, 200), min_size=1, max_size=6))
def test_drift_carried_across_passes_equals_one_pass(seed: int, cuts: list[int]) -> None:
    """The statistic stored after a window and continued from there gives exactly what one
    pass over all windows gives, wherever the passes are cut."""
    zs = _noise(600, seed, bias=0.0) + _noise(300, seed + 1, bias=1.2) + _noise(300, seed + 2)
    windows = _windows(zs)
    cfg = DriftConfig()
    whole, whole_states = drift_series("x", windows, cfg)
    verdicts: list[Verdict] = []
    state: DriftState | None = None
    at = 0
    for cut in [*cuts, len(windows)]:
        part = windows[at : min(at + cut, len(windows))]
        if not part:
            break
        got, states = drift_series("x", part, cfg, state=state)
        verdicts += got
        state = DriftState.from_json(states[-1].to_json())  # as stored and read back
        at += len(part)
    assert [(v.decision, v.at) for v in verdicts] == [(v.decision, v.at) for v in whole]
    assert states[-1] == whole_states[-1]


def test_drift_catches_a_ramp_and_resolves_when_the_bias_is_gone() -> None:
    """A meter drifting 3 % a month on two 1 % meters (z rises by 1.06 per 360 windows) is
    caught well before 1.5 %; recalibrated, the alert ends within a few days, where the bias
    went away."""
    rng = np.random.default_rng(7)
    ramp = [z + 1.06 * i / 360 for i, z in enumerate(rng.standard_normal(400))]
    after = list(rng.standard_normal(300))
    windows = _windows(ramp + after)
    verdicts, _ = drift_series("x", windows, DriftConfig())
    fired = _fired(verdicts)
    assert fired and fired[0] < 360
    first = verdicts[fired[0]]
    assert first.at is not None and first.at <= windows[fired[0]].start
    resolved = next(i for i, v in enumerate(verdicts) if i > fired[0] and v.decision == "resolve")
    assert 400 <= resolved < 400 + 72
    ended = verdicts[resolved].at
    assert ended is not None and abs(ended - windows[400].start) <= 12 * HOUR
    assert len(_fired(verdicts)) == 1  # no flapping


def test_drift_false_alarms_are_rare_on_clean_windows() -> None:
    verdicts, _ = drift_series("x", _windows(_noise(20_000, 3)), DriftConfig())
    assert _fired(verdicts) == []


def test_drift_waits_for_the_imbalance_episode_and_restarts_after_it() -> None:
    """A two-day leak the imbalance rule fires on: drift does not fire during it, and once the
    episode is resolved the statistic starts again from zero (no drift for days after)."""
    zs = _noise(100, 1) + _noise(48, 2, bias=5.0) + _noise(400, 3)
    windows = _windows(zs)
    imb = imbalance_series("x", "MWh", windows, False, ImbalanceConfig())
    episodes = imbalance_episodes(imb)
    verdicts, states = drift_series("x", windows, DriftConfig(), episodes=episodes)
    assert _fired(verdicts) == []
    ended = next(i for i, e in enumerate(episodes) if e.ended)
    assert 148 <= ended <= 152
    assert states[ended].hi == 0.0 and states[ended].lo == 0.0
    # without the episode the same windows fire drift and keep it for a while
    alone, _ = drift_series("x", windows, DriftConfig())
    assert _fired(alone)


def test_a_drift_already_firing_carries_on_through_an_imbalance_episode() -> None:
    zs = _noise(100, 1) + _noise(200, 4, bias=1.0) + _noise(6, 5, bias=6.0) + _noise(50, 6, 1.0)
    windows = _windows(zs)
    episodes = imbalance_episodes(imbalance_series("x", "MWh", windows, False, ImbalanceConfig()))
    verdicts, _ = drift_series("x", windows, DriftConfig(), episodes=episodes)
    fired = _fired(verdicts)
    assert len(fired) == 1 and fired[0] < 300
    assert all(v.decision == Decision.fire for v in verdicts[fired[0] : 350])


def test_resolve_limit_is_short_for_big_biases_and_long_for_small_ones() -> None:
    assert resolve_limit(4.0) < 3 < resolve_limit(1.0) < 10 < resolve_limit(0.4) < 28


def test_imbalance_episode_runs_from_its_first_bad_window_to_its_first_clean_one() -> None:
    zs = [0.1, 0.2, 4.0, 0.5, 4.5, 5.0, 4.0, 0.1, 4.2, 0.3, 0.2, 0.1]
    windows = _windows(zs)
    verdicts = imbalance_series("x", "MWh", windows, False, ImbalanceConfig())
    fire = next(v for v in verdicts if v.decision == Decision.fire)
    assert fire.at == windows[4].start  # the run of bad windows that fired: 4, 5
    resolve = next(v for v in verdicts if v.decision == Decision.resolve and v.at is not None)
    assert resolve.at == windows[9].start  # two clean windows from 9 on


def test_flag_series_stamps_the_run_it_fired_on_and_the_clean_run_that_resolved_it() -> None:
    starts = [T0 + i * HOUR for i in range(8)]
    flags = [False, True, True, True, False, False, False, False]
    verdicts = flag_series(flags, 3, 3, lambda i, run: Verdict(Decision.fire), starts)
    assert verdicts[3].decision == Decision.fire and verdicts[3].at == starts[1]
    assert verdicts[6].decision == Decision.resolve and verdicts[6].at == starts[4]


def test_outlier_times_and_repeat_runs() -> None:
    ts = np.arange(10.0) * 60
    register = np.array([0, 1, 2, 30, 4, 5, 6, 7, 8, 9], dtype=float)
    assert list(outlier_times("total", ts, register)) == [180.0]
    rate = np.array([5, 5.1, 4.9, 50, 5, 5.2, 5, 4.8, 5, 5.1])
    assert list(outlier_times("rate", ts, rate)) == [180.0]
    assert list(outlier_times("delta", ts, rate)) == []
    stuck = np.array([0, 1, 2, 3, 3, 3, 3, 4, 5, 6], dtype=float)
    assert repeat_run(ts, stuck, 250.0) == (240.0, 420.0)  # first repeat, first move
    assert repeat_run(ts, np.full(10, 3.0), 250.0) == (None, None)


def _m(i: int, keys: set[str], start: int, end: int | None, incident: int | None = None) -> Member:
    return Member(
        i,
        frozenset(keys),
        T0 + start * HOUR,
        None if end is None else T0 + end * HOUR,
        incident,
    )


def test_incidents_group_alerts_that_share_a_key_and_overlap() -> None:
    a = _m(1, {"exchange:x"}, 0, 10)  # imbalance
    b = _m(2, {"exchange:x"}, 3, 12)  # suspect on one of its meters
    c = _m(3, {"exchange:y"}, 4, 6)  # another exchange
    d = _m(4, {"exchange:x"}, 100, None)  # days later
    e = _m(5, {"exchange:x", "exchange:y"}, 5, 5)  # a meter of both: joins x and y
    groups = plan([d, c, b, a, e])
    assert [sorted(m.alert_id for m in g.members) for g in groups] == [[1, 2, 3, 5], [4]]
    assert all(g.incident_id is None for g in groups)


def test_incidents_bridge_a_short_gap_and_keep_the_oldest_id() -> None:
    gap = int(GAP / HOUR)
    a = _m(1, {"exchange:x"}, 0, 5, incident=7)
    b = _m(2, {"exchange:x"}, 5 + gap - 1, 20, incident=9)  # the imbalance again, soon after
    c = _m(3, {"exchange:x"}, 20 + gap + 1, 30, incident=9)  # later: an incident of its own
    groups = plan([a, b, c])
    assert [(g.incident_id, [m.alert_id for m in g.members]) for g in groups] == [
        (7, [1, 2]),
        (9, [3]),
    ]


def test_imbalance_needs_its_windows_on_one_side() -> None:
    """Two imbalanced windows whose d swings from one sign to the other (a quantity counted
    in the neighbouring window, or chance) are no episode; two on one side are; once firing,
    an imbalanced window on the other side keeps it firing."""
    swing = _windows([0.2, -3.3, 3.3, 0.4, 0.1, 0.3])
    verdicts = imbalance_series("x", "MWh", swing, False, ImbalanceConfig())
    assert _fired(verdicts) == []
    one_side = _windows([0.2, 3.3, 0.1, -3.4, -3.8, 0.4])
    verdicts = imbalance_series("x", "MWh", one_side, False, ImbalanceConfig())
    assert _fired(verdicts) == [4]
    fire = next(v for v in verdicts if v.decision == Decision.fire)
    assert fire.at == one_side[3].start  # the one-sided run, not the window before it
    leak = _windows([4.0, 4.5, -3.5, 4.2, 0.1, 0.2, 0.1])
    verdicts = imbalance_series("x", "MWh", leak, False, ImbalanceConfig())
    assert _fired(verdicts) == [1]
    assert [v.decision for v in verdicts[1:4]] == [Decision.fire] * 3


def test_summaries_write_times_in_the_networks_zone_with_the_offset() -> None:
    """An alert's summary names its instants as people there read them: in the network's time
    zone with that zone's offset (summer and winter time differ), never in bare UTC."""
    zone = ZoneInfo("Europe/Copenhagen")
    summer = datetime(2026, 7, 1, 10, tzinfo=UTC)
    winter = datetime(2026, 12, 1, 10, tzinfo=UTC)
    stale = evaluate_stale("m1", summer, 60, summer + timedelta(hours=1), StaleConfig(), tz=zone)
    assert "last reading 2026-07-01 12:00 +02:00" in stale.summary
    windows = _windows([9.0, 9.0, 9.0], start=winter)
    fired = imbalance_series("x", "MWh", windows, False, ImbalanceConfig(), tz=zone)[-1]
    assert fired.decision == Decision.fire
    assert "window from 2026-12-01 13:00 +01:00" in fired.summary
    reset = evaluate_counter_reset(
        "m1", [(winter, 10.0, 1.0)], winter, CounterResetConfig(), tz=zone
    )
    assert "went down at 2026-12-01 11:00 +01:00" in reset.summary
    # without a zone (a bare call): UTC, still with its offset
    assert (
        "2026-07-01 10:00 +00:00"
        in evaluate_stale("m1", summer, 60, summer + timedelta(hours=1), StaleConfig()).summary
    )
