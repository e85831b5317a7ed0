"""The example network files load, are realistic, and bad network files are refused by path."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.network import (
    CANONICAL_UNIT,
    Kind,
    Network,
    NetworkError,
    ReadingType,
    load_network,
    parse_network,
)
from core.units import conversion

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KALUNDBORG = EXAMPLES / "kalundborg.yaml"
SMALL = EXAMPLES / "small.yaml"
HOURS_PER_YEAR = 8760
DAYS_PER_YEAR = 365

# Mean true flow on the provider side of each exchange, in the kind's canonical unit per hour
# (pipes) or per day (trucks). The simulator's sizes; the YAML comments state the same figures.
MEAN_FLOW: dict[str, dict[str, tuple[float, str]]] = {
    "kalundborg": {
        "steam-asnaes-novo": (20.0, "h"),  # MW
        "steam-asnaes-novozymes": (15.0, "h"),
        "steam-asnaes-equinor": (10.0, "h"),
        "dh-asnaes-kommune": (20.0, "h"),
        "wwtp-heat-forsyning-kommune": (80_000 / HOURS_PER_YEAR, "h"),
        "cooling-equinor-asnaes": (120.0, "h"),  # m3/h
        "water-forsyning-equinor": (160.0, "h"),
        "water-forsyning-novozymes": (180.0, "h"),
        "water-forsyning-novo": (56.0, "h"),
        "condensate-asnaes-equinor": (65_000 / HOURS_PER_YEAR, "h"),
        "gypsum-asnaes-gyproc": (480.0, "d"),  # t/d
        "flyash-asnaes-aalborg-portland": (275.0, "d"),
        "sulphur-equinor-kemira": (3_000 / DAYS_PER_YEAR, "d"),
        "yeast-novo-farms": (150_000 / DAYS_PER_YEAR, "d"),
        "biomass-novozymes-bioenergi": (34.0, "h"),  # t/h
        "biomethane-bioenergi-gyproc": (3.0, "h"),  # MW
    },
    "small": {
        "heat-plant-town": (5.0, "h"),
        "gypsum-plant-boards": (100.0, "d"),
    },
}

# Balance `in` meters that belong to no exchange: their mean flow per hour.
HEADER_FLOW = {"asnaes-boiler-steam": 65.0, "forsyning-tisso-treated": 400.0}


def annual(exchange_id: str, network: str = "kalundborg") -> float:
    value, per = MEAN_FLOW[network][exchange_id]
    return value * (HOURS_PER_YEAR if per == "h" else DAYS_PER_YEAR)


@pytest.fixture(scope="module")
def kalundborg() -> Network:
    return load_network(KALUNDBORG)


@pytest.fixture
def data() -> dict[str, Any]:
    """A fresh, mutable parse of kalundborg.yaml."""
    loaded = yaml.safe_load(KALUNDBORG.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def index_of(items: list[dict[str, Any]], item_id: str) -> int:
    return next(i for i, item in enumerate(items) if item["id"] == item_id)


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(NetworkError) as caught:
        parse_network(data)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- the example files ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [KALUNDBORG, SMALL], ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    net = load_network(path)
    assert net.network == path.stem
    assert net.timezone == "Europe/Copenhagen"
    assert net.currency == "EUR"


def test_kalundborg_size_and_coverage(kalundborg: Network) -> None:
    assert len(kalundborg.partners) >= 10
    assert len(kalundborg.exchanges) >= 15
    assert {ex.kind for ex in kalundborg.exchanges} == set(Kind)
    assert {m.reading for m in kalundborg.meters} == set(ReadingType)
    assert {ex.billing.value for ex in kalundborg.exchanges} == {"received", "sent", "reconciled"}
    assert len(kalundborg.balances) >= 1
    names = " ".join(p.name for p in kalundborg.partners)
    for who in ("Asnæs", "Equinor", "Novo Nordisk", "Novozymes", "Gyproc", "Kalundborg Forsyning"):
        assert who in names


def test_small_shape() -> None:
    net = load_network(SMALL)
    assert len(net.partners) == 3
    assert len(net.exchanges) == 2
    heat, material = sorted(net.exchanges, key=lambda ex: ex.kind.value)
    assert heat.kind == Kind.heat and material.kind == Kind.material
    heat_meters = [net.meter(mid) for mid in (*heat.sent, *heat.received)]
    assert {m.unit for m in heat_meters} == {"GJ", "kWh"}
    assert all(m.reading == ReadingType.total for m in heat_meters)
    material_meters = [net.meter(mid) for mid in (*material.sent, *material.received)]
    assert all(m.reading == ReadingType.delta for m in material_meters)


@pytest.mark.parametrize("path", [KALUNDBORG, SMALL], ids=lambda p: p.name)
def test_every_meter_is_used(path: Path) -> None:
    net = load_network(path)
    used = {mid for ex in net.exchanges for mid in (*ex.sent, *ex.received)}
    used |= {mid for bal in net.balances for mid in (*bal.in_, *bal.out)}
    assert {m.id for m in net.meters} == used


@pytest.mark.parametrize("path", [KALUNDBORG, SMALL], ids=lambda p: p.name)
def test_meters_are_at_the_right_end(path: Path) -> None:
    net = load_network(path)
    for ex in net.exchanges:
        assert all(net.meter(mid).partner == ex.provider for mid in ex.sent)
        assert all(net.meter(mid).partner == ex.receiver for mid in ex.received)
        assert all(net.meter(mid).kind == ex.kind for mid in (*ex.sent, *ex.received))


@pytest.mark.parametrize("path", [KALUNDBORG, SMALL], ids=lambda p: p.name)
def test_meter_units_and_intervals(path: Path) -> None:
    net = load_network(path)
    for m in net.meters:
        assert conversion(m.unit, m.kind, m.reading) > 0
        if m.reading == ReadingType.delta:
            assert m.interval is None, m.id
            assert m.kind == Kind.material, m.id
            assert m.unit in {"t", "kg"}, m.id
        else:
            assert m.interval is not None and 10 <= m.interval <= 900, m.id
        if m.reading == ReadingType.rate:
            assert "/h" in m.unit or m.unit in {"kW", "MW"}, m.id


@pytest.mark.parametrize("path", [KALUNDBORG, SMALL], ids=lambda p: p.name)
def test_meter_uncertainty_follows_accuracy_classes(path: Path) -> None:
    """Relative 1-sigma = MPE/2 of the class the meter would be verified to."""
    net = load_network(path)
    for m in net.meters:
        if m.kind == Kind.heat and m.medium == "hot water":  # EN 1434 class 2: 3.4-3.6 %
            assert 0.017 <= m.uncertainty <= 0.02, m.id
        elif m.kind == Kind.heat:  # steam or gas with a flow computer: +-1-2 %
            assert 0.005 <= m.uncertainty <= 0.01, m.id
        elif m.kind == Kind.water:  # class 2: +-2 % (+-3 % above 30 C)
            assert 0.01 <= m.uncertainty <= 0.015, m.id
        elif m.reading == ReadingType.delta:  # weighbridge, class III in service
            assert 0.001 <= m.uncertainty <= 0.002, m.id
            assert m.uncertainty_abs > 0, m.id
        else:  # Coriolis mass flow
            assert 0.001 <= m.uncertainty <= 0.01, m.id


def test_losses_and_windows(kalundborg: Network) -> None:
    for ex in kalundborg.exchanges:
        meters = [kalundborg.meter(mid) for mid in (*ex.sent, *ex.received)]
        trucked = all(m.reading == ReadingType.delta for m in meters)
        assert ex.window.total_seconds() == (86400 if trucked else 3600), ex.id
        media = {m.medium for m in meters}
        if "steam" in media:
            assert 0.03 <= ex.loss <= 0.05, ex.id
        elif "hot water" in media:
            assert 0.05 <= ex.loss <= 0.10, ex.id
        elif ex.kind == Kind.water:
            assert 0.005 <= ex.loss <= 0.01, ex.id
        else:
            assert ex.loss == 0.0, ex.id
    for bal in kalundborg.balances:
        assert 0.0 <= bal.loss <= 0.02
        assert bal.window.total_seconds() == 3600


def test_terms(kalundborg: Network) -> None:
    changed = [ex for ex in kalundborg.exchanges if len(ex.terms) >= 2]
    assert changed, "at least one exchange changes its terms mid-year"
    assert any(t.from_.isoformat() == "2026-07-01" for ex in changed for t in ex.terms)
    for ex in kalundborg.exchanges:
        assert ex.terms, ex.id
        assert ex.terms[0].from_.isoformat() == "2026-01-01", ex.id
        for t in ex.terms:
            assert t.receiver_avoided_cost >= t.price, ex.id  # the receiver saves money
    gypsum = next(ex for ex in kalundborg.exchanges if ex.id == "gypsum-asnaes-gyproc")
    assert all(t.provider_avoided_cost == 64 for t in gypsum.terms)  # landfill tax
    assert all(t.receiver_avoided_co2 == Decimal("0.035") for t in gypsum.terms)


def test_partner_contacts_use_example_domains(kalundborg: Network) -> None:
    emails = [p.email for p in kalundborg.partners if p.email]
    webhooks = [p.webhook for p in kalundborg.partners if p.webhook]
    assert emails and webhooks
    assert all(re.fullmatch(r"[a-z0-9.-]+@[a-z0-9.-]+\.example", e) for e in emails)
    assert all(re.fullmatch(r"https://[a-z0-9.-]+\.example(/\S*)?", w) for w in webhooks)


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("network,path", [("kalundborg", KALUNDBORG), ("small", SMALL)])
def test_mean_flow_table_covers_the_file(network: str, path: Path) -> None:
    net = load_network(path)
    assert set(MEAN_FLOW[network]) == {ex.id for ex in net.exchanges}


def _comment_above(text: str, exchange_id: str) -> str:
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == f"- id: {exchange_id}")
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        comment.insert(0, line.strip().lstrip("#").strip())
    return " ".join(comment)


@pytest.mark.parametrize("network,path", [("kalundborg", KALUNDBORG), ("small", SMALL)])
def test_comments_state_the_annual_quantity(network: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    net = load_network(path)
    for ex in net.exchanges:
        comment = _comment_above(text, ex.id)
        match = re.search(r"~([\d,]+) (\S+)/yr", comment)
        assert match, f"{ex.id}: no '~N unit/yr' comment"
        assert match.group(2) == CANONICAL_UNIT[ex.kind], ex.id
        stated = float(match.group(1).replace(",", ""))
        assert stated == pytest.approx(annual(ex.id, network), rel=0.01), ex.id


def test_published_quantities() -> None:
    assert 150_000 <= annual("gypsum-asnaes-gyproc") <= 200_000
    assert annual("wwtp-heat-forsyning-kommune") == pytest.approx(80_000, rel=0.05)
    assert annual("condensate-asnaes-equinor") == pytest.approx(65_000, rel=0.05)
    assert annual("yeast-novo-farms") == pytest.approx(150_000, rel=0.05)
    assert annual("sulphur-equinor-kemira") == pytest.approx(3_000, rel=0.05)


def test_wwtp_heat_is_about_a_third_of_district_heating(kalundborg: Network) -> None:
    losses = {ex.id: ex.loss for ex in kalundborg.exchanges}
    wwtp = annual("wwtp-heat-forsyning-kommune") * (1 - losses["wwtp-heat-forsyning-kommune"])
    asnaes = annual("dh-asnaes-kommune") * (1 - losses["dh-asnaes-kommune"])
    assert 0.30 < wwtp / (wwtp + asnaes) < 0.40


def test_balances_are_consistent_with_the_exchanges(kalundborg: Network) -> None:
    """Σ out = (1 − loss) · Σ in with every meter at its exchange's mean flow."""
    flow = dict(HEADER_FLOW)
    for ex in kalundborg.exchanges:
        value, per = MEAN_FLOW["kalundborg"][ex.id]
        per_hour = value if per == "h" else value / 24
        for mid in ex.sent:
            flow[mid] = per_hour / len(ex.sent)
        for mid in ex.received:
            flow[mid] = per_hour * (1 - ex.loss) / len(ex.received)
    for bal in kalundborg.balances:
        inflow = sum(flow[mid] for mid in bal.in_)
        outflow = sum(flow[mid] for mid in bal.out)
        assert outflow == pytest.approx((1 - bal.loss) * inflow, rel=1e-9), bal.id


# --- bad network files --------------------------------------------------------------------------


def test_parse_accepts_the_unmodified_data(data: dict[str, Any]) -> None:
    assert len(parse_network(data).exchanges) == len(data["exchanges"])


def test_unknown_meter_named_by_path(data: dict[str, Any]) -> None:
    data["exchanges"][3]["sent"][0] = "x"
    assert "exchanges[3].sent[0]: unknown meter 'x'" in problems_of(data)


def test_unknown_meter_in_balance(data: dict[str, Any]) -> None:
    data["balances"][0]["in"] = ["nope"]
    data["balances"][1]["out"][2] = "gone"
    problems = problems_of(data)
    assert "balances[0].in[0]: unknown meter 'nope'" in problems
    assert "balances[1].out[2]: unknown meter 'gone'" in problems


def test_every_cross_problem_is_listed(data: dict[str, Any]) -> None:
    data["exchanges"][0]["received"] = ["ghost"]
    data["exchanges"][5]["provider"] = "nobody"
    problems = problems_of(data)
    assert "exchanges[0].received[0]: unknown meter 'ghost'" in problems
    assert "exchanges[5].provider: unknown partner 'nobody'" in problems


def test_negative_loss(data: dict[str, Any]) -> None:
    data["exchanges"][2]["loss"] = -0.01
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith("exchanges[2].loss: ")
    assert "greater than or equal to 0" in problems[0]


def test_balance_loss_of_one(data: dict[str, Any]) -> None:
    data["balances"][1]["loss"] = 1.0
    assert any(p.startswith("balances[1].loss: ") for p in problems_of(data))


@pytest.mark.parametrize("window", ["7h", "25m", "11s", "2d"])
def test_window_that_does_not_divide_a_day(data: dict[str, Any], window: str) -> None:
    data["exchanges"][4]["window"] = window
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith("exchanges[4].window: window ")
    assert f"'{window}'" in problems[0]


def test_balance_window_that_does_not_divide_a_day(data: dict[str, Any]) -> None:
    data["balances"][0]["window"] = "7h"
    assert problems_of(data) == ["balances[0].window: window '7h' does not divide a day"]


@pytest.mark.parametrize("window", ["15m", "8h", "1d", 3600])
def test_windows_that_divide_a_day(data: dict[str, Any], window: str | int) -> None:
    data["exchanges"][4]["window"] = window
    parse_network(data)


def test_window_that_is_not_a_duration(data: dict[str, Any]) -> None:
    data["exchanges"][4]["window"] = "hourly"
    (problem,) = problems_of(data)
    assert problem.startswith("exchanges[4].window: not a duration: 'hourly'")


def test_heat_unit_on_a_water_meter(data: dict[str, Any]) -> None:
    total = index_of(data["meters"], "equinor-water-in")
    rate = index_of(data["meters"], "novozymes-water-in")
    data["meters"][total]["unit"] = "GJ"
    data["meters"][rate]["unit"] = "GJ"
    problems = problems_of(data)
    assert f"meters[{total}].unit: unit 'GJ' does not convert to water (m3)" in problems
    assert f"meters[{rate}].unit: unit 'GJ' does not convert to a rate of water (m3/h)" in problems


def test_unknown_unit(data: dict[str, Any]) -> None:
    i = index_of(data["meters"], "asnaes-dh-heat")
    data["meters"][i]["unit"] = "wombats"
    assert f"meters[{i}].unit: unknown unit 'wombats'" in problems_of(data)


@pytest.mark.parametrize("unit", ["m3dB", "dB", "Np", "m3 dB"])
def test_a_unit_pint_chokes_on_is_a_problem_not_a_crash(data: dict[str, Any], unit: str) -> None:
    i = index_of(data["meters"], "equinor-water-in")
    data["meters"][i]["unit"] = unit
    problems = problems_of(data)
    assert any(p.startswith(f"meters[{i}].unit: ") and unit in p for p in problems), problems


def test_register_unit_on_a_rate_meter(data: dict[str, Any]) -> None:
    i = index_of(data["meters"], "novo-steam-in")  # a rate meter in MW
    data["meters"][i]["unit"] = "MWh"
    assert any(p.startswith(f"meters[{i}].unit: ") for p in problems_of(data))


@pytest.mark.parametrize("section", ["partners", "meters", "exchanges", "balances"])
def test_duplicate_ids(data: dict[str, Any], section: str) -> None:
    data[section].append(copy.deepcopy(data[section][0]))
    last = len(data[section]) - 1
    dup = data[section][0]["id"]
    assert f"{section}[{last}].id: duplicate id '{dup}'" in problems_of(data)


def test_unknown_time_zone(data: dict[str, Any]) -> None:
    data["timezone"] = "Mars/Olympus_Mons"
    assert problems_of(data) == ["timezone: unknown time zone 'Mars/Olympus_Mons'"]


def test_time_zone_that_is_a_zone_directory(data: dict[str, Any]) -> None:
    data["timezone"] = "Europe"
    assert problems_of(data) == ["timezone: unknown time zone 'Europe'"]


def test_meter_listed_twice_on_one_side(data: dict[str, Any]) -> None:
    i = index_of(data["exchanges"], "steam-asnaes-novo")
    data["exchanges"][i]["sent"] = ["asnaes-steam-novo", "asnaes-steam-novo"]
    assert any(p.startswith(f"exchanges[{i}].sent[1]: ") for p in problems_of(data))


@pytest.mark.parametrize("field", ["interval", "uncertainty_abs"])
def test_non_finite_meter_numbers(data: dict[str, Any], field: str) -> None:
    m = index_of(data["meters"], "asnaes-steam-novo")
    data["meters"][m][field] = float("inf")
    assert any(p.startswith(f"meters[{m}].{field}: ") for p in problems_of(data))


def test_meter_of_another_partner_on_the_sent_side(data: dict[str, Any]) -> None:
    i = index_of(data["exchanges"], "steam-asnaes-novo")
    data["exchanges"][i]["sent"] = ["equinor-steam-in"]
    assert (
        f"exchanges[{i}].sent[0]: meter 'equinor-steam-in' belongs to 'equinor', not to 'asnaes'"
        in problems_of(data)
    )


def test_meter_moved_to_the_wrong_partner(data: dict[str, Any]) -> None:
    m = index_of(data["meters"], "novo-steam-in")
    data["meters"][m]["partner"] = "equinor"
    i = index_of(data["exchanges"], "steam-asnaes-novo")
    assert (
        f"exchanges[{i}].received[0]: meter 'novo-steam-in' belongs to 'equinor', not to 'novo'"
        in problems_of(data)
    )


def test_meter_of_the_wrong_kind(data: dict[str, Any]) -> None:
    i = index_of(data["exchanges"], "gypsum-asnaes-gyproc")
    data["exchanges"][i]["sent"] = ["asnaes-condensate-out"]
    problems = problems_of(data)
    assert (
        f"exchanges[{i}].sent[0]: meter 'asnaes-condensate-out' measures water, "
        "the exchange is material"
    ) in problems


def test_meter_of_an_unknown_partner(data: dict[str, Any]) -> None:
    m = index_of(data["meters"], "farms-yeast-weighbridge")
    data["meters"][m]["partner"] = "pigs"
    assert f"meters[{m}].partner: unknown partner 'pigs'" in problems_of(data)


def test_interval_required_for_registers_and_rates(data: dict[str, Any]) -> None:
    m = index_of(data["meters"], "asnaes-steam-novo")
    del data["meters"][m]["interval"]
    assert problems_of(data) == [f"meters[{m}].interval: required for total meters"]


def test_terms_out_of_order(data: dict[str, Any]) -> None:
    i = index_of(data["exchanges"], "gypsum-asnaes-gyproc")
    data["exchanges"][i]["terms"].reverse()
    assert problems_of(data) == [f"exchanges[{i}].terms: dates must be strictly increasing"]


def test_unknown_field_named(data: dict[str, Any]) -> None:
    data["exchanges"][1]["losses"] = 0.04
    assert problems_of(data) == ["exchanges[1].losses: unknown field"]


def test_bad_id(data: dict[str, Any]) -> None:
    data["partners"][0]["id"] = "Asnæs"
    (problem, *_) = problems_of(data)
    assert problem.startswith("partners[0].id: ")


def test_not_a_mapping() -> None:
    with pytest.raises(NetworkError, match=r"\(top\)"):
        parse_network(["not", "a", "network"])


def test_load_network_reports_unreadable_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="cannot read"):
        load_network(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [unclosed\n", encoding="utf-8")
    with pytest.raises(NetworkError, match="not valid YAML"):
        load_network(bad)
