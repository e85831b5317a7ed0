"""The network file: a typed model, loading with errors that name the YAML path."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

# The vocabulary of kinds and reading types, used through this module by most of symbiont.
from core.kinds import CANONICAL_UNIT as CANONICAL_UNIT
from core.kinds import Kind as Kind
from core.kinds import ReadingType as ReadingType
from core.rule_settings import rule_config
from core.units import UnitError, conversion
from core.yamlload import load_yaml, paused_gc

ID_RE = r"^[a-z0-9][a-z0-9-]*$"


class Billing(StrEnum):
    """Which quantity of an exchange a statement bills."""

    received = "received"
    sent = "sent"
    reconciled = "reconciled"


class NetworkError(ValueError):
    """A network file that cannot be applied; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d)\s*$")
_DURATION_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int) -> timedelta:
    """``15m``, ``1h``, ``1d``, ``90s`` or a number of seconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        match = _DURATION_RE.match(str(text))
        if not match:
            raise ValueError(f"not a duration: {text!r} (use e.g. 15m, 1h, 1d)")
        seconds = int(match.group(1)) * _DURATION_UNIT[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, in the largest whole unit: ``1d``, ``1h``, ``15m``."""
    seconds = int(value.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def _window(value: Any) -> timedelta:
    window = value if isinstance(value, timedelta) else parse_duration(value)
    seconds = int(window.total_seconds())
    if seconds < 86400 and 86400 % seconds != 0:
        raise ValueError(f"window {value!r} does not divide a day")
    if seconds > 86400 and seconds != 86400:
        raise ValueError(f"window {value!r} is longer than a day (at most 1d)")
    return window


# An exchange's or balance's window: a duration that divides a day, written back as one.
Window = Annotated[
    timedelta, BeforeValidator(_window), PlainSerializer(format_duration, return_type=str)
]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


ADDRESS_MAX = 200
VAT_ID_RE = re.compile(r"^[A-Z]{2}[A-Z0-9]{2,18}$")
PAYMENT_TERMS_MAX = 1000


def _printed_text(value: str, what: str, limit: int, *, lines: bool = False) -> str:
    """Text printed on statements: not blank, at most ``limit`` characters, no control
    characters (line breaks only where ``lines``)."""
    if not value.strip():
        raise ValueError(f"{what} is empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long (at most {limit})")
    allowed = "\n" if lines else ""
    if any((ord(c) < 32 or 127 <= ord(c) < 160) and c not in allowed for c in value):
        if lines:
            raise ValueError(f"{what} holds a control character")
        raise ValueError(
            f"{what} holds a line break or control character "
            "(write it on one line, parts separated by commas)"
        )
    return value


class Partner(Model):
    """A company in the network: a power station, a refinery, a utility, a municipality."""

    id: str = Field(
        pattern=ID_RE,
        max_length=64,
        description="Unique name used everywhere else in the file, in MQTT topics and in the API",
    )
    name: str = Field(description="Name shown on the dashboard and printed on statements")
    email: str | None = Field(
        default=None,
        description="Address that receives each issued statement, PDF and CSV attached"
        " (when mail is configured)",
    )
    webhook: str | None = Field(
        default=None,
        description="http(s) URL that receives a signed notice of each issued statement",
    )
    address: str | None = Field(
        default=None,
        description=f"Legal address printed on statements (one line, at most {ADDRESS_MAX}"
        " characters)",
    )
    vat_id: str | None = Field(
        default=None,
        description="VAT id printed on statements: a country code and 2-18 capital letters or"
        " digits, e.g. `DK12345678`",
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _printed_text(value, "address", ADDRESS_MAX)

    @field_validator("vat_id")
    @classmethod
    def _check_vat_id(cls, value: str | None) -> str | None:
        if value is not None and not VAT_ID_RE.match(value):
            raise ValueError(
                f"VAT id {value!r} is not a country code and 2-18 capital letters or digits "
                "(e.g. DK12345678; no spaces or punctuation)"
            )
        return value


# A Sparkplug group, edge node or device id: any text but the topic's reserved characters.
SPARKPLUG_ID_RE = r"^[^/+#]+$"


class SparkplugSource(Model):
    """Where a meter's readings come from over Sparkplug B: a metric of an edge node, or of a
    device of that node (``device`` omitted for the node's own metrics)."""

    group: str = Field(
        pattern=SPARKPLUG_ID_RE, max_length=256, description="The Sparkplug group id"
    )
    node: str = Field(
        pattern=SPARKPLUG_ID_RE, max_length=256, description="The edge node id within the group"
    )
    device: str | None = Field(
        default=None,
        pattern=SPARKPLUG_ID_RE,
        max_length=256,
        description="The device id at the node; left out for a metric of the node itself",
    )
    metric: str = Field(
        min_length=1,
        max_length=1024,
        description="The metric's name as its birth certificate gives it, e.g. `Flow/Total`",
    )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(group, node, device or "", metric): how ingest looks the metric up."""
        return (self.group, self.node, self.device or "", self.metric)

    def describe(self) -> str:
        where = "/".join(p for p in (self.group, self.node, self.device) if p)
        return f"{where} metric {self.metric!r}"


class Meter(Model):
    """One measuring device at a partner, for one kind of flow. A meter may belong to
    exchanges, balances, both, or neither (then it is only watched for alerts)."""

    id: str = Field(
        pattern=ID_RE,
        max_length=64,
        description="Unique name; the last level of the meter's MQTT topic",
    )
    partner: str = Field(description="The partner that owns the meter and publishes its readings")
    kind: Kind = Field(description="What it measures")
    medium: str | None = Field(
        default=None, description="A free label: steam, hot water, FGD gypsum …"
    )
    reading: ReadingType = Field(
        description="How it reports: `total` a register that only grows (a counter),"
        " `rate` an instantaneous flow, `delta` the quantity since its last reading"
        " (a weighbridge ticket)"
    )
    unit: str = Field(
        description="The unit the device sends, any unit that converts to the kind's canonical"
        " unit (MWh, m3, t; per hour for `rate` meters): `GJ`, `kWh`, `MW`, `m3/h`, `kg` …"
    )
    uncertainty: float = Field(
        ge=0,
        le=1,
        description="Relative standard uncertainty (1 σ) of a window quantity: 0.01 is 1 %",
    )
    uncertainty_abs: float = Field(
        default=0.0,
        ge=0,
        description="Absolute standard uncertainty per window in the canonical unit, added to"
        " the relative one; it may not be 0 together with `uncertainty`",
    )
    interval: float | None = Field(
        default=None,
        gt=0,
        description="Expected seconds between readings; required for `total` and `rate`"
        " meters, left out for `delta` meters that report when something happens",
    )
    sparkplug: SparkplugSource | None = Field(
        default=None,
        description="The meter's source over Sparkplug B: `{group, node, device, metric}`"
        " (`device` left out for a metric of the edge node itself); see docs/sparkplug.md",
    )


class Terms(Model):
    """What an exchange costs and saves from a date on; each entry holds until the next."""

    from_: date = Field(alias="from", description="First day these terms hold (YYYY-MM-DD)")
    price: Decimal = Field(
        ge=0, description="Price per canonical unit, paid by the receiver to the provider"
    )
    receiver_avoided_cost: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description="Per unit: what the receiver would otherwise pay for it",
    )
    receiver_avoided_co2: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description="Tonnes of CO2 per unit the receiver no longer emits",
    )
    provider_avoided_cost: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description="Per unit: the disposal or treatment cost the provider saves",
    )
    provider_avoided_co2: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description="Tonnes of CO2 per unit the provider no longer emits",
    )


class Exchange(Model):
    """A flow from a provider to a receiver, measured at both ends. symbiont reconciles every
    window of it and bills it on the partners' monthly statements."""

    id: str = Field(pattern=ID_RE, max_length=64, description="Unique name")
    provider: str = Field(description="The partner that sends")
    receiver: str = Field(description="The partner that receives (not the provider)")
    kind: Kind = Field(description="What flows; every meter of the exchange measures it")
    sent: list[str] = Field(min_length=1, description="The provider's meters of this flow, summed")
    received: list[str] = Field(
        min_length=1, description="The receiver's meters of this flow, summed"
    )
    loss: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Fraction expected to be lost on the way: the receiver should get"
        " (1 − loss) × what was sent",
    )
    window: Window = Field(
        default=timedelta(hours=1),
        description="How often it is reconciled, cut in the network's time zone; a multiple"
        " of the finest window of each of its meters (`1d` suits trucked materials)",
    )
    billing: Billing = Field(
        default=Billing.received,
        description="What statements bill: the `received` quantity, the `sent` one, or the"
        " receiver-side `reconciled` value",
    )
    nominal: float | None = Field(
        default=None,
        gt=0,
        description="Typical mean flow in the canonical unit per hour (MW, m3/h, t/h); not"
        " used to reconcile: it sizes the simulator and the dashboard's diagram",
    )
    terms: list[Terms] = Field(
        default_factory=list,
        description="Prices and savings over time, dates strictly increasing; without terms"
        " (and before the first date) lines show their quantities without a price",
    )
    rules: dict[str, Any] = Field(
        default_factory=dict,
        description="Alert rule settings for this exchange (`imbalance`, `drift`), see"
        " [alert rule settings](#alert-rule-settings)",
    )


class Balance(Model):
    """A point where mass or energy is conserved (a steam header, a water hub):
    Σ out = (1 − loss) · Σ in. Its meters are reconciled together."""

    id: str = Field(pattern=ID_RE, max_length=64, description="Unique name")
    kind: Kind = Field(description="What is conserved; every meter of it measures this")
    in_: list[str] = Field(alias="in", min_length=1, description="Meters of what flows in")
    out: list[str] = Field(min_length=1, description="Meters of what flows out")
    loss: float = Field(default=0.0, ge=0, lt=1, description="Fraction expected to be lost")
    window: Window = Field(default=timedelta(hours=1), description="How often it is reconciled")


class StatementSettings(Model):
    """How statements are issued and what they print."""

    min_coverage: float = Field(
        default=0.99,
        gt=0,
        le=1,
        strict=True,
        description="A month is issued by itself only when every line of a statement has"
        " this much of its data (0.99: 99 % of the month measured); otherwise it is held",
    )
    payment_terms: str | None = Field(
        default=None,
        description=f"Printed on statements (at most {PAYMENT_TERMS_MAX} characters, line"
        " breaks allowed), e.g. `Net 30 days from the statement date.`",
    )

    @field_validator("payment_terms")
    @classmethod
    def _check_payment_terms(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _printed_text(value, "payment terms", PAYMENT_TERMS_MAX, lines=True)


class Network(Model):
    """The whole file: the network's name, time zone and currency, and the lists below."""

    network: str = Field(
        pattern=ID_RE,
        description="Short name of the network; it starts every statement's document number",
    )
    name: str = Field(description="Name shown on the dashboard and statements")
    timezone: str = Field(
        default="UTC",
        description="IANA time zone (`Europe/Copenhagen`): months, days and windows are cut in"
        " it, correct across daylight-saving changes",
    )
    currency: str = Field(
        default="EUR",
        pattern=r"^[A-Z]{3}$",
        description="Currency code (ISO 4217) of every price and amount",
    )
    partners: list[Partner] = Field(min_length=1, description="The companies")
    meters: list[Meter] = Field(default_factory=list, description="The measuring devices")
    exchanges: list[Exchange] = Field(
        default_factory=list, description="The flows between partners"
    )
    balances: list[Balance] = Field(
        default_factory=list, description="Points where mass or energy is conserved"
    )
    meter_rules: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Alert rule settings per meter id, see"
        " [alert rule settings](#alert-rule-settings)",
    )
    statements: StatementSettings = Field(
        default_factory=StatementSettings, description="How statements are issued"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def partner(self, partner_id: str) -> Partner:
        return next(p for p in self.partners if p.id == partner_id)

    def meter(self, meter_id: str) -> Meter:
        return next(m for m in self.meters if m.id == meter_id)

    def meter_windows(self) -> dict[str, timedelta]:
        """Each meter's finest window among the exchanges and balances it takes part in.

        Ingest marks (meter, window start) dirty at this granularity; a meter in nothing is
        watched hourly.
        """
        finest = dict.fromkeys([m.id for m in self.meters], timedelta(hours=1))
        seen: set[str] = set()
        subjects = [(ex.window, (*ex.sent, *ex.received)) for ex in self.exchanges]
        subjects += [(bal.window, (*bal.in_, *bal.out)) for bal in self.balances]
        for window, mids in subjects:
            for mid in mids:
                finest[mid] = window if mid not in seen else min(finest[mid], window)
                seen.add(mid)
        return finest


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = {"from_": "from", "in_": "in"}.get(part, part)
            out += f".{name}" if out else name
    return out


def _cross_check(net: Network) -> list[str]:
    problems: list[str] = []

    def dupes(items: list[Any], section: str) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                problems.append(f"{section}[{i}].id: duplicate id '{item.id}'")
            seen.add(item.id)

    dupes(net.partners, "partners")
    dupes(net.meters, "meters")
    dupes(net.exchanges, "exchanges")
    dupes(net.balances, "balances")
    partners = {p.id for p in net.partners}
    meters = {m.id: m for m in net.meters}

    def side_meter(path: str, ids: list[str], j: int, kind: Kind, subject: str) -> Meter | None:
        """The ``j``-th meter of one side of an exchange or balance, its problems noted
        (listed twice, unknown, of another kind); ``None`` when it is unknown."""
        mid = ids[j]
        if mid in ids[:j]:
            problems.append(f"{path}: meter '{mid}' listed twice")
        meter = meters.get(mid)
        if meter is None:
            problems.append(f"{path}: unknown meter '{mid}'")
            return None
        if meter.kind != kind:
            problems.append(
                f"{path}: meter '{mid}' measures {meter.kind.value}, the {subject} is {kind.value}"
            )
        return meter

    for i, m in enumerate(net.meters):
        if m.partner not in partners:
            problems.append(f"meters[{i}].partner: unknown partner '{m.partner}'")
        try:
            conversion(m.unit, m.kind, m.reading)
        except UnitError as exc:
            problems.append(f"meters[{i}].unit: {exc}")
        if m.uncertainty == 0 and m.uncertainty_abs == 0:
            problems.append(
                f"meters[{i}].uncertainty: uncertainty and uncertainty_abs cannot both be 0"
            )
        if m.reading != ReadingType.delta and m.interval is None:
            problems.append(f"meters[{i}].interval: required for {m.reading.value} meters")

    sparkplug_owner: dict[tuple[str, str, str, str], str] = {}
    for i, m in enumerate(net.meters):
        if m.sparkplug is None:
            continue
        first = sparkplug_owner.setdefault(m.sparkplug.key, m.id)
        if first != m.id:
            problems.append(
                f"meters[{i}].sparkplug: {m.sparkplug.describe()} is mapped to both "
                f"meter '{first}' and meter '{m.id}'"
            )

    # Each loop takes a fast path for an item with nothing wrong, and works out what is wrong
    # (in the same words and order) only for the others: a network may have 100,000s of them.
    for i, ex in enumerate(net.exchanges):
        for field, pid in (("provider", ex.provider), ("receiver", ex.receiver)):
            if pid not in partners:
                problems.append(f"exchanges[{i}].{field}: unknown partner '{pid}'")
        if ex.provider == ex.receiver:
            problems.append(f"exchanges[{i}].receiver: same as the provider '{ex.provider}'")
        for side, owner, ids in (
            ("sent", ex.provider, ex.sent),
            ("received", ex.receiver, ex.received),
        ):
            for j, mid in enumerate(ids):
                known = meters.get(mid)
                if (
                    known is not None
                    and known.kind == ex.kind
                    and known.partner == owner
                    and (j == 0 or mid not in ids[:j])
                ):
                    continue
                path = f"exchanges[{i}].{side}[{j}]"
                meter = side_meter(path, ids, j, ex.kind, "exchange")
                if meter is None:
                    continue
                if meter.partner != owner:
                    problems.append(
                        f"{path}: meter '{mid}' belongs to '{meter.partner}', not to '{owner}'"
                    )
        if not set(ex.sent).isdisjoint(ex.received):
            problems.append(f"exchanges[{i}]: a meter is both sent and received")
        if len(ex.terms) > 1:
            froms = [t.from_ for t in ex.terms]
            if froms != sorted(froms) or len(set(froms)) != len(froms):
                problems.append(f"exchanges[{i}].terms: dates must be strictly increasing")
        if ex.rules:
            problems.extend(_check_rules(f"exchanges[{i}].rules", ex.rules, EXCHANGE_RULES))

    for i, bal in enumerate(net.balances):
        for side in ("in_", "out"):
            for j in range(len(getattr(bal, side))):
                path = f"balances[{i}].{_loc([side])}[{j}]"
                side_meter(path, getattr(bal, side), j, bal.kind, "balance")
        if not set(bal.in_).isdisjoint(bal.out):
            problems.append(f"balances[{i}]: a meter is both in and out")

    finest = net.meter_windows() if not problems else {}
    for i, ex in enumerate(net.exchanges):
        window = ex.window
        for mid in (*ex.sent, *ex.received):
            fine = finest.get(mid)
            if fine is not None and fine != window and window % fine:
                problems.append(
                    f"exchanges[{i}].window: {format_duration(window)} is not a multiple of "
                    f"{format_duration(fine)}, the finest window of meter '{mid}'"
                )
    for mid, rules in net.meter_rules.items():
        if mid not in meters:
            problems.append(f"meter_rules.{mid}: unknown meter '{mid}'")
        problems.extend(_check_rules(f"meter_rules.{mid}", rules, METER_RULES))
    return problems


EXCHANGE_RULES = frozenset({"imbalance", "drift"})
METER_RULES = frozenset(
    {
        "meter_suspect",
        "meter_stale",
        "meter_stuck",
        "counter_reset",
        "negative_flow",
        "meter_spike",
    }
)


def _check_rules(path: str, rules: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    problems = []
    for rule, overrides in rules.items():
        if rule not in RULE_NAMES:
            problems.append(f"{path}.{rule}: unknown rule")
        elif rule not in allowed:
            problems.append(
                f"{path}.{rule}: not a rule for this kind of subject "
                f"(use one of {', '.join(sorted(allowed))})"
            )
        else:
            try:
                rule_config(rule, overrides)
            except ValueError as exc:
                problems.append(f"{path}.{exc}")
    return problems


RULE_NAMES = frozenset(
    {
        "imbalance",
        "drift",
        "meter_suspect",
        "meter_stale",
        "meter_stuck",
        "counter_reset",
        "negative_flow",
        "meter_spike",
        "rejections",
    }
)


def parse_network(data: Any) -> Network:
    """Validate a parsed YAML document; raise NetworkError naming every problem's path."""
    if not isinstance(data, dict):
        raise NetworkError(["(top): the network file must be a mapping"])
    try:
        with paused_gc():
            net = Network.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _loc(err["loc"]) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"{where}: {msg}")
        raise NetworkError(problems) from None
    problems = _cross_check(net)
    if problems:
        raise NetworkError(problems)
    return net


def load_network(path: str | Path) -> Network:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NetworkError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise NetworkError([f"{path}: not valid YAML: {exc}"]) from None
    del text
    return parse_network(data)
