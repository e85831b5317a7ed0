"""Response models: what the OpenAPI document promises and every response is checked against."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Status = Literal["ok", "imbalance", "incomplete", "no_data", "error"]


class Problem(BaseModel):
    detail: Any = Field(description="what went wrong")


class WhoAmI(BaseModel):
    role: Literal["admin", "operator", "partner", "integration"]
    partner: str | None
    token_id: int
    name: str = Field(
        default="", description="who the token stands for (its name, else role and id)"
    )


class PartnerOut(BaseModel):
    id: str
    name: str


class MeterOut(BaseModel):
    id: str
    partner: str
    kind: str
    medium: str | None
    reading: str
    unit: str = Field(description="canonical unit of its readings (MWh, m3, t; per hour for rates)")
    uncertainty: float
    interval_s: float | None
    window_s: int


class ExchangeOut(BaseModel):
    id: str
    name: str
    provider: str
    receiver: str
    kind: str
    medium: str | None
    unit: str = Field(description="canonical quantity unit: MWh, m3 or t")
    loss: float
    window_s: int
    billing: str
    nominal: float | None = Field(description="typical flow per hour in `unit`")
    sent_meters: list[str]
    received_meters: list[str]


class BalanceOut(BaseModel):
    id: str
    kind: str
    loss: float
    window_s: int
    in_meters: list[str]
    out_meters: list[str]


class NetworkOut(BaseModel):
    id: str
    name: str
    timezone: str
    currency: str
    partners: list[PartnerOut]
    meters: list[MeterOut]
    exchanges: list[ExchangeOut]
    balances: list[BalanceOut]


class AlertOut(BaseModel):
    id: int
    fingerprint: str
    rule: str
    subject: str
    subject_kind: Literal["exchange", "meter", "partner"]
    severity: Literal["warning", "critical"]
    status: Literal["firing", "resolved"]
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    started_at: datetime = Field(description="when the condition began")
    resolved_at: datetime | None = Field(description="when the condition ended")
    summary: str
    details: dict[str, Any]
    detected_at: datetime | None = Field(
        default=None,
        description="when the rules saw it fire (the end of the window that showed it)",
    )
    incident_id: int | None = Field(default=None, description="the incident it belongs to")
    ack_comment: str | None = Field(
        default=None, description="the comment given with the acknowledgement"
    )
    silenced_by: int | None = Field(
        default=None,
        description="the silence that mutes its deliveries now (not shown to partners)",
    )


class AckIn(BaseModel):
    """An acknowledgement; the body may be left out."""

    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(
        default=None, max_length=2000, description="what is being done about it"
    )


class MatcherIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["rule", "subject", "partner"] = Field(
        description="rule: the alert's rule; subject: its exchange, meter or partner; partner:"
        " a partner of its subject (a meter's owner, an exchange's provider or receiver)"
    )
    value: str = Field(min_length=1, max_length=200, description="equal to this")


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matchers: list[MatcherIn] = Field(
        min_length=1, max_length=10, description="all must match an alert for it to be muted"
    )
    starts_at: AwareDatetime | None = Field(default=None, description="default: now")
    ends_at: AwareDatetime
    comment: str = Field(min_length=1, max_length=2000, description="why")


class MatcherOut(BaseModel):
    name: Literal["rule", "subject", "partner"]
    value: str


class SilenceOut(BaseModel):
    id: int
    matchers: list[MatcherOut]
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str = Field(description="the name of the token that made it")
    created_at: datetime
    expired_by: str | None = Field(description="who expired it before its end, if anyone")
    expired_at: datetime | None
    state: Literal["pending", "active", "expired"]
    muted_deliveries: int = Field(
        description="deliveries it held back (some go out after it ends, see the docs)"
    )
    firing_alerts: list[int] = Field(
        description="ids of firing alerts its matchers select (none once it has expired)"
    )


class SilencePage(BaseModel):
    items: list[SilenceOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class IncidentEvent(BaseModel):
    at: datetime = Field(description="when the alert's condition began or ended, or the ack")
    event: Literal["firing", "resolved", "acknowledged", "updated"]
    alert_id: int
    rule: str
    subject: str
    severity: Literal["warning", "critical"]
    summary: str
    by: str | None = Field(description="who acknowledged (acknowledged events)")
    comment: str | None = Field(
        default=None, description="the acknowledgement's comment (acknowledged events)"
    )


class IncidentOut(BaseModel):
    id: int
    subject: str = Field(description="the exchange (or meter, or partner) it is about")
    subject_kind: Literal["exchange", "meter", "partner"]
    status: Literal["open", "resolved"] = Field(description="open while any of its alerts fires")
    severity: Literal["warning", "critical"] = Field(description="the worst of its alerts")
    started_at: datetime
    resolved_at: datetime | None
    summary: str
    rules: list[str]
    alert_ids: list[int]


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class IncidentDetail(IncidentOut):
    alerts: list[AlertOut]
    timeline: list[IncidentEvent] = Field(description="its alerts' events, in order")


MeterState = Literal["ok", "offline", "stale", "stuck", "suspect", "no_data", "retired"]


class LiveExchange(BaseModel):
    id: str
    provider: str
    receiver: str
    kind: str
    unit: str
    sent_rate: float | None = Field(
        description="current flow at the provider's meters, from their latest readings"
    )
    received_rate: float | None = Field(
        description="current flow at the receiver's meters, from their latest readings"
    )
    rate_unit: str
    rates_from: datetime | None = Field(description="the earliest reading the rates come from")
    rates_to: datetime | None = Field(description="the latest reading the rates come from")
    window_start: datetime | None = Field(description="the last complete window")
    window_end: datetime | None
    sent: float | None = Field(description="S of the last complete window")
    received: float | None = Field(description="R of the last complete window")
    loss: float = Field(description="the expected fraction lost in transit, l")
    delta: float | None = Field(description="S − R")
    delta_pct: float | None = Field(description="(S − R) / S in %")
    expected_loss: float | None = Field(description="l·S: what may be lost in transit")
    imbalance: float | None = Field(description="d = (1 − l)·S − R")
    sigma: float | None
    z: float | None
    coverage: float | None
    status: Status | None = Field(description="status of the last complete window")
    meter_state: MeterState = Field(
        description="the worst state of its meters the caller may see (a partner: its own)"
    )
    meter_states: dict[str, MeterState] = Field(description="per meter the caller may see")
    open_alerts: int = Field(
        description="open alerts on it and on the meters the caller may see (a partner: its own)"
    )


class LiveMeter(BaseModel):
    id: str
    partner: str
    kind: str
    reading: str
    unit: str = Field(description="canonical unit of its readings")
    last_ts: datetime | None
    last_value: float | None = Field(description="the last reading, as stored")
    age_s: float | None
    rate: float | None = Field(description="current flow per hour from its latest readings")
    rate_unit: str
    rate_from: datetime | None
    rate_to: datetime | None
    state: MeterState
    offline_since: datetime | None = Field(
        default=None,
        description="when its Sparkplug B edge node or device died (NDEATH/DDEATH), while it"
        " is dead",
    )
    stale_after_s: float | None = Field(description="silence after which it is stale")
    open_alerts: int


class Live(BaseModel):
    generated_at: datetime
    timezone: str = Field(description="the network's time zone")
    exchanges: list[LiveExchange]
    meters: list[LiveMeter]
    alerts: list[AlertOut]


class MeterList(BaseModel):
    generated_at: datetime
    timezone: str
    items: list[LiveMeter]


class ReadingOut(BaseModel):
    ts: datetime
    value: float


class ReadingPage(BaseModel):
    meter: str
    unit: str
    items: list[ReadingOut]
    next_cursor: str | None


class WindowOut(BaseModel):
    start: datetime
    end: datetime
    sent: float | None
    received: float | None
    loss: float
    imbalance: float | None
    sigma: float | None
    z: float | None
    coverage: float
    status: Status


class WindowList(BaseModel):
    exchange: str
    unit: str
    items: list[WindowOut]


class BalanceRow(BaseModel):
    start: datetime
    end: datetime
    windows: int
    sent: float | None
    received: float | None
    loss: float = Field(description="the exchange's loss fraction")
    imbalance: float | None
    sigma: float | None
    z: float | None
    coverage: float
    imbalance_windows: int
    incomplete_windows: int
    error_windows: int = Field(
        0, description="windows that could not be computed (see the rules_error alerts)"
    )


class BalanceList(BaseModel):
    exchange: str
    unit: str
    interval: Literal["day", "month"]
    timezone: str
    items: list[BalanceRow]


class ReconciledMeter(BaseModel):
    meter: str
    measured: float | None
    reconciled: float | None
    adjustment: float | None
    z: float | None
    suspect: bool


class ReconciliationOut(BaseModel):
    component: str
    start: datetime
    end: datetime
    statistic: float | None
    dof: int
    critical: float | None
    passed: bool | None
    suspects: list[str]
    meters: list[ReconciledMeter]


class ReconciliationPage(BaseModel):
    items: list[ReconciliationOut]
    next_cursor: str | None


class StatementInfo(BaseModel):
    month: str
    status: Literal["draft", "held", "issued"] = Field(
        description="draft: the month is open or not due yet; held: due for issue but waiting"
        " for its data; issued: the latest revision is issued"
    )
    issued_at: datetime | None
    revision: int | None
    content_hash: str | None
    document_number: str | None = None


class StatementList(BaseModel):
    partner: str
    items: list[StatementInfo]


class RevisionOut(BaseModel):
    revision: int
    issued_at: datetime
    reason: str | None = Field(description="why this revision replaced the previous one")
    content_hash: str
    previous_hash: str | None = Field(description="content hash of the revision it replaced")
    document_number: str | None
    incomplete_reason: str | None = Field(
        description="why it was issued although its data was incomplete"
    )


class RevisionList(BaseModel):
    partner: str
    month: str
    items: list[RevisionOut]


class IssueRequest(BaseModel):
    accept_incomplete: bool = Field(
        default=False, description="issue statements whose data is incomplete too"
    )
    reason: str | None = Field(
        default=None,
        max_length=2000,
        description="why incomplete data is accepted (required with accept_incomplete; printed"
        " on those statements)",
    )


class IssuedOut(BaseModel):
    partner: str
    month: str
    new: bool
    content_hash: str
    revision: int = 1
    document_number: str | None = None
    incomplete_reason: str | None = None


class IssueResult(BaseModel):
    month: str
    statements: list[IssuedOut]


class HeldLine(BaseModel):
    exchange: str
    role: str
    coverage: float
    windows: int


class HeldOut(BaseModel):
    partner: str
    month: str
    lines: list[HeldLine] = Field(description="the lines short of data")
    pending_windows: int = Field(description="windows of the month not reconciled yet")


class IssueIncomplete(BaseModel):
    detail: str
    month: str
    statements: list[IssuedOut] = Field(description="what was issued (or issued before)")
    held: list[HeldOut] = Field(description="what was not issued: its data is incomplete")


class RejectionOut(BaseModel):
    id: int
    received_at: datetime
    topic: str
    partner: str | None
    meter: str | None
    reason: str
    detail: str
    payload: str | None = Field(description="the first 4 KiB of the payload, as text")


class RejectionPage(BaseModel):
    items: list[RejectionOut]
    next_cursor: str | None


class IngestRejection(BaseModel):
    reason: str
    detail: str


class IngestResult(BaseModel):
    readings: int = Field(description="valid readings in the payload")
    stored: int
    duplicates: int
    rejected: list[IngestRejection]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    database: bool
    broker: bool | None = Field(description="null when no broker is configured")
    network: bool
    detail: list[str]
