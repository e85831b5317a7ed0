"""Statements in the database: drafts computed on demand, issuing (idempotent, immutable,
with adjustments for issued months whose data changed), revisions, delivery through the outbox.

Never issued on missing data by itself: a statement is issued only when every line's coverage
is at least the network's ``statements.min_coverage`` and no window of the month still waits
to be reconciled. Until then a month that is due (its grace period is over) is *held*: the
automatic issue (:func:`issue_due`) keeps a ``statement_held`` alert firing per partner and
month, naming the lines short of data, and resolves it when the month is issued. On command
(:func:`issue_month` with ``accept_incomplete``) a statement is issued anyway, the reason
printed on it.

An issued statement never changes. It can be superseded by a *revision*
(:mod:`statements.revise`): revision n+1, issued, immutable and delivered like the first,
carries its reason and the content hash of the revision it replaces; the latest revision is
the statement, and the next month's adjustments compare against it.

Every issued statement and revision gets a document number, ``{network}-{yyyy}-{nnnnn}``
(year of issue in the network's zone, numbered per network and year), taken in the transaction
that stores it, so numbers have neither gaps nor duplicates. The document number, the revision
fields and the reason for issuing incomplete data are part of the JSON document (and of its
content hash): ``document_number``, ``revision``, ``supersedes`` (revision and document number
of the replaced revision), ``previous_hash``, ``revision_reason``, ``incomplete_reason``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from core.network import Network, parse_duration
from core.settings import Settings
from core.windows import month_bounds
from rules import lifecycle
from rules.alerts import (
    STATEMENT_HELD,
    Decision,
    LineShortfall,
    Verdict,
    evaluate_statement_held,
)
from rules.engine import Engine
from statements import csv_export, document
from statements.adjustments import (
    adjustments_from_document,
    billed_lines,
    compute_adjustments,
    with_adjustments,
)
from statements.alert_counts import month_alert_counts
from statements.compute import (
    Adjustment,
    Statement,
    WindowRow,
    build_statement,
    daily_series,
    month_label,
    parse_month,
    partner_exchanges,
)
from statements.pdf import render_pdf
from statements.pdf_pool import IssueTimings, _PdfJob, _PdfRenderer, pdf_workers

log = logging.getLogger("symbiont.statements")

STATEMENTS_TOPIC = "symbiont/statements/{partner}"


@dataclass(frozen=True)
class Issued:
    partner: str
    month: str
    content_hash: str
    new: bool  # issued by this call (False: it was issued before)
    revision: int = 1
    document_number: str | None = None  # None: issued before statements were numbered
    incomplete_reason: str | None = None  # issued although its data was incomplete: why


@dataclass(frozen=True)
class Held:
    """A partner's statement for a month that is not issued because its data is incomplete:
    the lines short of data, and how many windows of the month wait to be reconciled."""

    partner: str
    month: str
    short: tuple[LineShortfall, ...]
    pending: int

    def describe(self) -> str:
        what = [
            f"{s.exchange} ({s.role}) "
            + (f"coverage {s.coverage:.2%}" if s.windows else "no data in the month")
            for s in self.short
        ]
        if self.pending:
            what.append(f"{self.pending} windows of the month wait to be reconciled")
        return "; ".join(what)


class IncompleteMonth(ValueError):
    """Statements of a month were not issued because their data is incomplete.

    ``held`` lists them with the lines short of data; ``issued`` what the same call issued
    (or found issued) for the other partners."""

    def __init__(
        self, month: str, held: Sequence[Held], issued: Sequence[Issued], min_coverage: float
    ) -> None:
        self.month = month
        self.held = list(held)
        self.issued = list(issued)
        self.min_coverage = min_coverage
        n = len(self.held)
        self.headline = (
            f"{n} statement{'s' if n != 1 else ''} of {month} not issued, data incomplete"
            f" (every line needs a coverage of {min_coverage * 100:g}%, and no window of the month"
            " may wait to be reconciled)"
        )
        lines = "".join(f"\n  {h.partner}: {h.describe()}" for h in self.held)
        super().__init__(self.headline + lines)


def shortfalls(statement: Statement, min_coverage: float) -> list[LineShortfall]:
    """The lines of ``statement`` short of data, one per exchange (the lowest coverage of an
    exchange whose line is split by a change of terms): those whose coverage is below
    ``min_coverage``, and those without any window in the month. The second matters for a
    trucked exchange, whose coverage counts time alone (a day without a ticket is complete):
    a month without a single ticket is far more often a weighbridge that did not report than
    a month without a truck, and is not billed as zero by itself."""
    need = Decimal(repr(min_coverage))
    short: dict[str, LineShortfall] = {}
    for line in statement.lines:
        if line.coverage >= need and line.windows > 0:
            continue
        before = short.get(line.exchange)
        coverage = float(line.coverage)
        windows = line.windows
        if before is not None:
            coverage = min(coverage, before.coverage)
            windows += before.windows
        short[line.exchange] = LineShortfall(line.exchange, line.role, coverage, windows)
    return list(short.values())


def due_at(net: Network, year: int, month: int, grace: str) -> datetime:
    """When a month's statements fall due: its end plus the grace period."""
    _, end = month_bounds(year, month, net.tz)
    return end + (parse_duration(grace) if grace else timedelta(days=3))


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + by
    return index // 12, index % 12 + 1


DUE_LOOKBACK_MONTHS = 12  # the automatic issue looks this many months back for held months


def due_months_of(
    net: Network,
    now: datetime,
    grace: str,
    issued: Mapping[str, set[str]],
    held: Mapping[str, set[str]] | None = None,
) -> dict[str, list[str]]:
    """Per partner (``issued``: its issued months; ``held``: the months of its firing
    ``statement_held`` alerts), the months due for issue and not issued, oldest first: last
    month once its grace period is over, every month held for its data until it is issued,
    and, for a partner that has had a statement, every later month not issued yet (at most
    :data:`DUE_LOOKBACK_MONTHS` back)."""
    last = previous_month(now, net)
    months = [_shift(*last, -k) for k in range(DUE_LOOKBACK_MONTHS - 1, -1, -1)]
    due = [month_label(y, m) for y, m in months if now >= due_at(net, y, m, grace)]
    last_label = month_label(*last)
    out: dict[str, list[str]] = {}
    for partner, done in issued.items():
        first = min(done) if done else None
        waiting = (held or {}).get(partner, set())
        out[partner] = [
            label
            for label in due
            if label not in done
            and (label == last_label or label in waiting or (first is not None and label > first))
        ]
    return out


async def due_months(
    conn: asyncpg.Connection, net: Network, partners: Sequence[str], now: datetime, grace: str
) -> dict[str, list[str]]:
    """:func:`due_months_of` for ``partners``, their issued and held months read from the
    database."""
    rows = await conn.fetch(
        "SELECT DISTINCT partner_id, month FROM statements WHERE partner_id = ANY($1::text[])",
        list(partners),
    )
    issued: dict[str, set[str]] = {p: set() for p in partners}
    for r in rows:
        issued[r["partner_id"]].add(r["month"])
    alerts = await conn.fetch(
        "SELECT subject, details->>'month' AS month FROM alerts WHERE rule = $1"
        " AND status = 'firing' AND subject_kind = 'partner' AND subject = ANY($2::text[])",
        STATEMENT_HELD,
        list(partners),
    )
    held: dict[str, set[str]] = {p: set() for p in partners}
    for r in alerts:
        if r["month"]:
            held[r["subject"]].add(r["month"])
    return due_months_of(net, now, grace, issued, held)


async def pending_windows(conn: asyncpg.Connection, net: Network, year: int, month: int) -> int:
    """Windows of the month whose readings still wait to be reconciled (after an outage, or
    a backfill in progress): a statement computed now would miss them."""
    start, end = month_bounds(year, month, net.tz)
    n = await conn.fetchval(
        """SELECT (SELECT count(*) FROM dirty_windows
                   WHERE window_start >= $1 AND window_start < $2)
                + (SELECT count(*) FROM dirty_subjects
                   WHERE window_start >= $1 AND window_start < $2)""",
        start,
        end,
    )
    return int(n or 0)


async def _windows_by_exchange(
    conn: asyncpg.Connection, net: Network, exchanges: Sequence[str], year: int, month: int
) -> dict[str, list[WindowRow]]:
    """The windows of ``exchanges`` that start in the month, by exchange, in one query."""
    start, end = month_bounds(year, month, net.tz)
    rows = await conn.fetch(
        """SELECT exchange_id, window_start, window_end, sent, received, reconciled_sent,
                  reconciled_received, coverage, status
           FROM exchange_windows WHERE exchange_id = ANY($1::text[])
           AND window_start >= $2 AND window_start < $3 ORDER BY exchange_id, window_start""",
        list(exchanges),
        start,
        end,
    )
    out: dict[str, list[WindowRow]] = {eid: [] for eid in exchanges}
    for r in rows:
        out[r["exchange_id"]].append(WindowRow.from_mapping(r))
    return out


def _partner_rows(
    net: Network, partner: str, windows: Mapping[str, list[WindowRow]]
) -> list[WindowRow]:
    return [w for ex, _ in partner_exchanges(net, partner) for w in windows.get(ex.id, ())]


async def month_windows(
    conn: asyncpg.Connection, net: Network, partner: str, year: int, month: int
) -> list[WindowRow]:
    exchanges = [ex.id for ex, _ in partner_exchanges(net, partner)]
    return _partner_rows(
        net, partner, await _windows_by_exchange(conn, net, exchanges, year, month)
    )


async def _alert_counts(
    conn: asyncpg.Connection, net: Network, year: int, month: int
) -> dict[str, int]:
    """Per exchange, the alerts on it or on its meters that were firing during the month."""
    return await month_alert_counts(conn, net, year, month)


async def stored(
    conn: asyncpg.Connection, partner: str, month: str, revision: int | None = None
) -> asyncpg.Record | None:
    """The issued statement of ``partner`` for ``month``: its latest revision, or the
    given one; None if there is none."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM statements WHERE partner_id = $1 AND month = $2"
        " AND ($3::integer IS NULL OR revision = $3) ORDER BY revision DESC LIMIT 1",
        partner,
        month,
        revision,
    )
    return row


async def _adjustments_for(
    conn: asyncpg.Connection, net: Network, partners: Sequence[str], label: str
) -> dict[str, list[Adjustment]]:
    """Per partner, for every issued month before ``label``: what it billed (its latest
    revision, plus the adjustments for it issued on other months' statements) against the
    same month recomputed from today's windows. One query for the issued statements (the
    latest revision of each month: an earlier revision is replaced, adjustments and all), one
    per earlier month for the windows of all the partners' exchanges."""
    issued = await conn.fetch(
        "SELECT DISTINCT ON (partner_id, month) partner_id, month, document FROM statements"
        " WHERE partner_id = ANY($1::text[]) AND month <> $2"
        " ORDER BY partner_id, month, revision DESC",
        list(partners),
        label,
    )
    docs: dict[str, list[dict[str, Any]]] = {p: [] for p in partners}
    for r in issued:
        docs[r["partner_id"]].append(json.loads(r["document"]))
    exchanges = list(
        dict.fromkeys(ex.id for p in partners if docs[p] for ex, _ in partner_exchanges(net, p))
    )
    windows: dict[str, dict[str, list[WindowRow]]] = {}
    out: dict[str, list[Adjustment]] = {p: [] for p in partners}
    for partner in partners:
        # adjustments already issued, on any other month's statement (a month held for its
        # data may be issued after later ones)
        earlier: list[Adjustment] = [a for d in docs[partner] for a in adjustments_from_document(d)]
        for doc in docs[partner]:
            if doc["month"] > label:
                continue
            year, month = parse_month(doc["month"])
            if doc["month"] not in windows:
                windows[doc["month"]] = await _windows_by_exchange(
                    conn, net, exchanges, year, month
                )
            before = with_adjustments(
                billed_lines(doc), [a for a in earlier if a.month == doc["month"]]
            )
            rows = _partner_rows(net, partner, windows[doc["month"]])
            now = build_statement(net, partner, year, month, rows)
            out[partner].extend(compute_adjustments(before, billed_lines(now)))
    return out


async def _adjustments(
    conn: asyncpg.Connection, net: Network, partner: str, label: str
) -> list[Adjustment]:
    return (await _adjustments_for(conn, net, [partner], label))[partner]


async def draft(
    conn: asyncpg.Connection, net: Network, partner: str, year: int, month: int, now: datetime
) -> Statement:
    label = month_label(year, month)
    windows = await month_windows(conn, net, partner, year, month)
    return build_statement(
        net,
        partner,
        year,
        month,
        windows,
        as_of=now,
        alerts=await _alert_counts(conn, net, year, month),
        adjustments=await _adjustments(conn, net, partner, label),
    )


async def document_for(
    conn: asyncpg.Connection,
    net: Network,
    partner: str,
    label: str,
    now: datetime,
    *,
    grace: str | None = None,
    revision: int | None = None,
) -> tuple[dict[str, Any], bytes | None, bytes | None]:
    """The issued statement (document, CSV, PDF): its latest revision, or ``revision``
    (LookupError if there is no such revision). Else the live draft's document and no stored
    renderings; its status is ``held`` when the month is due for issue (``grace``, the
    statement grace period, given) and waits for its data."""
    row = await stored(conn, partner, label, revision)
    if row is not None:
        return json.loads(row["document"]), bytes(row["csv"]), bytes(row["pdf"])
    if revision is not None:
        raise LookupError(f"no revision {revision} of the statement of {partner} for {label}")
    year, month = parse_month(label)
    doc = document.statement_document(await draft(conn, net, partner, year, month, now))
    if grace is not None and label in (await due_months(conn, net, [partner], now, grace))[partner]:
        doc = _amended(doc, status="held")
    return doc, None, None


def _amended(doc: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """``doc`` with ``fields`` set and its content hash computed again."""
    out = {**doc, **fields}
    out["content_hash"] = document.content_hash(out)
    return out


async def render_pdf_for(conn: asyncpg.Connection, net: Network, doc: dict[str, Any]) -> bytes:
    """The PDF of ``doc`` (a draft's, which is not stored), rendered off the event loop: it
    takes a good fraction of a second, which the API must not spend blocking other requests."""
    year, month = parse_month(doc["month"])
    windows = await month_windows(conn, net, doc["partner"], year, month)
    daily = daily_series(net, doc["partner"], year, month, windows)
    return await asyncio.to_thread(render_pdf, doc, daily)


# ------------------------------------------------------------------------------- issuing


@dataclass
class _Prepared:
    partner: str
    doc: dict[str, Any]
    text: str
    csv: bytes
    pdf: _PdfJob


@dataclass
class _Ready:
    """A statement that passed the gate (or was accepted incomplete), not stored yet."""

    partner: str
    statement: Statement
    rows: list[WindowRow]
    incomplete_reason: str | None


async def issue_month(
    conn: asyncpg.Connection,
    net: Network,
    year: int,
    month: int,
    now: datetime,
    *,
    settings: Settings | None = None,
    workers: int | None = None,
    timings: IssueTimings | None = None,
    accept_incomplete: str | None = None,
) -> list[Issued]:
    """Issue every partner's statement for the month (idempotent: an issued one is left as
    it is and nothing is sent again).

    A statement whose data is incomplete (a line under the network's
    ``statements.min_coverage``, or windows of the month still waiting to be reconciled) is
    not issued: the others are, then :class:`IncompleteMonth` names what was held back and
    why. With ``accept_incomplete`` (the reason, required) those are issued too, the reason
    printed on them (``incomplete_reason``).

    The month's windows, alerts and earlier statements are read once for all partners and
    each statement is computed here; then, in one transaction (under a per-statement
    advisory lock, only what no other issuer stored first), the statements get their
    document numbers, are rendered as JSON and CSV here while their PDFs render in worker
    processes (``workers``, default :func:`pdf_workers`; 0 or 1: in a thread of this
    process), and are stored.

    Each new statement is enqueued for delivery in that transaction (``_enqueue_delivery``):
    the MQTT notice, the partner's webhook, and, when ``settings`` configure SMTP, a mail to
    the partner's address(es).  Without ``settings`` no mail is sent: callers that should
    mail pass the service's settings.  A ``statement_held`` alert of the partner and month is
    resolved in the same transaction.  ``timings``, when given, is filled with where the time
    went."""
    issued, held = await _issue(
        conn,
        net,
        year,
        month,
        now,
        settings=settings,
        workers=workers,
        timings=timings,
        accept_incomplete=accept_incomplete,
    )
    if held:
        raise IncompleteMonth(month_label(year, month), held, issued, net.statements.min_coverage)
    return issued


async def month_gate(
    conn: asyncpg.Connection, net: Network, year: int, month: int, now: datetime
) -> list[Held]:
    """The partners' statements for the month that are not issued and would be held if it
    were issued at ``now``, with the lines short of data (nothing is issued)."""
    label = month_label(year, month)
    done = await _issued_already(conn, label, [p.id for p in net.partners])
    todo = [p.id for p in net.partners if p.id not in done]
    exchanges = list(dict.fromkeys(ex.id for p in todo for ex, _ in partner_exchanges(net, p)))
    windows = await _windows_by_exchange(conn, net, exchanges, year, month)
    pending = await pending_windows(conn, net, year, month)
    _, held = _gate(net, year, month, todo, windows, pending, now)
    return held


def _gate(
    net: Network,
    year: int,
    month: int,
    partners: Sequence[str],
    windows: Mapping[str, list[WindowRow]],
    pending: int,
    now: datetime,
) -> tuple[list[str], list[Held]]:
    """Which of the partners' statements for the month have complete data, and which are
    held (with their lines short of data)."""
    complete: list[str] = []
    held: list[Held] = []
    for partner in partners:
        rows = _partner_rows(net, partner, windows)
        statement = build_statement(net, partner, year, month, rows, as_of=now)
        short = shortfalls(statement, net.statements.min_coverage)
        if short or pending:
            held.append(Held(partner, month_label(year, month), tuple(short), pending))
        else:
            complete.append(partner)
    return complete, held


async def _issue(
    conn: asyncpg.Connection,
    net: Network,
    year: int,
    month: int,
    now: datetime,
    *,
    partners: Sequence[str] | None = None,
    settings: Settings | None = None,
    workers: int | None = None,
    timings: IssueTimings | None = None,
    accept_incomplete: str | None = None,
) -> tuple[list[Issued], list[Held]]:
    """Issue the month's statements of ``partners`` (default: all) whose data is complete,
    or all with ``accept_incomplete``; returns them (network order) and those held back."""
    label = month_label(year, month)
    _, end = month_bounds(year, month, net.tz)
    if now < end:
        raise ValueError(f"month {label} has not ended yet (it ends {end.isoformat()})")
    if accept_incomplete is not None and not accept_incomplete.strip():
        raise ValueError("issuing incomplete statements needs a reason")
    t = timings if timings is not None else IssueTimings()
    began = time.perf_counter()
    wanted = [p.id for p in net.partners if partners is None or p.id in partners]
    results = await _issued_already(conn, label, wanted)
    todo = [p for p in wanted if p not in results]
    if not todo:
        t.compute += time.perf_counter() - began
        return [results[p] for p in wanted if p in results], []
    exchanges = list(dict.fromkeys(ex.id for p in todo for ex, _ in partner_exchanges(net, p)))
    windows = await _windows_by_exchange(conn, net, exchanges, year, month)
    pending = await pending_windows(conn, net, year, month)
    complete, held = _gate(net, year, month, todo, windows, pending, now)
    reasons: dict[str, str | None] = dict.fromkeys(complete)
    if accept_incomplete is not None:
        reasons.update((h.partner, accept_incomplete.strip()) for h in held)
        held = []
    chosen = [p for p in todo if p in reasons]
    if not chosen:  # all held: nothing more to read (the automatic issue asks every minute)
        t.compute += time.perf_counter() - began
        return [results[p] for p in wanted if p in results], held
    alerts = await _alert_counts(conn, net, year, month)
    adjustments = await _adjustments_for(conn, net, chosen, label)
    ready: list[_Ready] = []
    for partner in chosen:
        rows = _partner_rows(net, partner, windows)
        statement = build_statement(
            net,
            partner,
            year,
            month,
            rows,
            status="issued",
            issued_at=now,
            alerts=alerts,
            adjustments=adjustments[partner],
        )
        ready.append(_Ready(partner, statement, rows, reasons[partner]))
        await asyncio.sleep(0)  # the event loop runs between statements
    t.compute += time.perf_counter() - began
    if ready:
        results.update(await _store_month(conn, net, year, month, now, ready, settings, workers, t))
    return [results[p] for p in wanted if p in results], held


def _issued_from(row: asyncpg.Record) -> Issued:
    return Issued(
        row["partner_id"],
        row["month"],
        row["content_hash"],
        False,
        revision=row["revision"],
        document_number=row["document_number"],
        incomplete_reason=row["incomplete_reason"],
    )


async def _issued_already(
    conn: asyncpg.Connection, label: str, partners: Sequence[str]
) -> dict[str, Issued]:
    """The latest revision of the partners' statements for ``label`` that are issued."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (partner_id) partner_id, month, content_hash, revision,"
        " document_number, incomplete_reason FROM statements"
        " WHERE month = $1 AND partner_id = ANY($2::text[])"
        " ORDER BY partner_id, revision DESC",
        label,
        list(partners),
    )
    return {r["partner_id"]: _issued_from(r) for r in rows}


async def _lock(conn: asyncpg.Connection, partner: str, label: str) -> None:
    """The advisory lock of one partner's statement for a month, until the transaction ends
    (taken in network order by every issuer, so two issuers never deadlock)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('statement:' || $1 || ':' || $2))", partner, label
    )


async def document_numbers(
    conn: asyncpg.Connection, net: Network, now: datetime, count: int
) -> list[str]:
    """``count`` new document numbers, ``{network}-{yyyy}-{nnnnn}`` (the year of ``now`` in
    the network's zone), the next ones of the network's sequence for that year. Call inside
    the transaction that stores the documents: the counter's row stays locked until it ends,
    so a second issuer waits, and a rollback gives the numbers back (no gaps)."""
    if count <= 0:
        return []
    year = now.astimezone(net.tz).year
    last = await conn.fetchval(
        """INSERT INTO document_numbers AS d (network, year, last) VALUES ($1, $2, $3)
           ON CONFLICT (network, year) DO UPDATE SET last = d.last + EXCLUDED.last
           RETURNING last""",
        net.network,
        year,
        count,
    )
    return [f"{net.network}-{year:04d}-{n:05d}" for n in range(last - count + 1, last + 1)]


def issued_document(
    statement: Statement,
    *,
    document_number: str,
    revision: int = 1,
    supersedes: Mapping[str, Any] | None = None,
    previous_hash: str | None = None,
    revision_reason: str | None = None,
    incomplete_reason: str | None = None,
) -> dict[str, Any]:
    """The JSON document of an issued statement: :func:`statements.document.statement_document`
    with the document number, the revision fields and the reason for issuing incomplete
    data, and the content hash over all of it."""
    return _amended(
        document.statement_document(statement),
        document_number=document_number,
        revision=revision,
        supersedes=dict(supersedes) if supersedes is not None else None,
        previous_hash=previous_hash,
        revision_reason=revision_reason,
        incomplete_reason=incomplete_reason,
    )


async def _store_month(
    conn: asyncpg.Connection,
    net: Network,
    year: int,
    month: int,
    now: datetime,
    ready: list[_Ready],
    settings: Settings | None,
    workers: int | None,
    t: IssueTimings,
) -> dict[str, Issued]:
    """Number, render and store the ``ready`` statements in one transaction, each only if no
    other issuer stored it first; enqueue their delivery and resolve their held alerts."""
    label = month_label(year, month)
    out: dict[str, Issued] = {}
    renderer = _PdfRenderer(pdf_workers(len(ready)) if workers is None else workers, t)
    try:
        async with conn.transaction():
            began = time.perf_counter()
            for r in ready:
                await _lock(conn, r.partner, label)
            out.update(await _issued_already(conn, label, [r.partner for r in ready]))
            ready = [r for r in ready if r.partner not in out]
            numbers = await document_numbers(conn, net, now, len(ready))
            t.store += time.perf_counter() - began
            prepared: list[_Prepared] = []
            for r, number in zip(ready, numbers, strict=True):
                began = time.perf_counter()
                doc = issued_document(
                    r.statement, document_number=number, incomplete_reason=r.incomplete_reason
                )
                daily = daily_series(net, r.partner, year, month, r.rows)
                rendered = time.perf_counter()
                text = document.render_json(doc).decode()
                csv = csv_export.render_csv(doc).encode()
                t.compute += rendered - began
                t.json_csv += time.perf_counter() - rendered
                prepared.append(_Prepared(r.partner, doc, text, csv, renderer.submit(doc, daily)))
                await asyncio.sleep(0)  # the event loop runs between statements
            targets = _alert_targets(settings)
            for p in prepared:
                pdf = await p.pdf.result()
                began = time.perf_counter()
                statement_id = await _insert(conn, label, now, p.doc, p.text, p.csv, pdf)
                await _enqueue_delivery(
                    conn, net, p.partner, label, statement_id, p.doc, settings=settings
                )
                await lifecycle.apply_verdict(
                    conn,
                    held_subject(p.partner, label),
                    Verdict(Decision.resolve, details={"issued": statement_id}),
                    now,
                    targets=targets,
                )
                out[p.partner] = Issued(
                    p.partner,
                    label,
                    p.doc["content_hash"],
                    True,
                    document_number=p.doc["document_number"],
                    incomplete_reason=p.doc["incomplete_reason"],
                )
                t.store += time.perf_counter() - began
            began = time.perf_counter()
        t.store += time.perf_counter() - began  # the commit
    finally:
        await renderer.close()
    for p in prepared:
        log.info(
            "issued statement %s %s, document %s (%s)%s",
            p.partner,
            label,
            p.doc["document_number"],
            p.doc["content_hash"][:12],
            f", incomplete: {p.doc['incomplete_reason']}" if p.doc["incomplete_reason"] else "",
        )
    return out


async def _insert(
    conn: asyncpg.Connection,
    label: str,
    now: datetime,
    doc: Mapping[str, Any],
    text: str,
    csv: bytes,
    pdf: bytes,
) -> int:
    statement_id: int = await conn.fetchval(
        """INSERT INTO statements (partner_id, month, revision, issued_at, document,
                                   content_hash, csv, pdf, reason, previous_hash,
                                   incomplete_reason, document_number)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id""",
        doc["partner"],
        label,
        doc["revision"],
        now,
        text,
        doc["content_hash"],
        csv,
        pdf,
        doc["revision_reason"],
        doc["previous_hash"],
        doc["incomplete_reason"],
        doc["document_number"],
    )
    return statement_id


def held_subject(partner: str, label: str) -> lifecycle.Subject:
    """The ``statement_held`` alert of a partner's statement for a month."""
    return lifecycle.Subject(STATEMENT_HELD, partner, "partner", key=label)


def _alert_targets(settings: Settings | None) -> lifecycle.Targets | None:
    if settings is None:
        return None
    from notify import outbox

    def targets(alert: dict[str, Any]) -> list[tuple[str, str]]:
        return list(outbox.alert_targets(settings, alert))

    return targets


async def _enqueue_delivery(
    conn: asyncpg.Connection,
    net: Network,
    partner: str,
    label: str,
    statement_id: int,
    doc: dict[str, Any],
    *,
    settings: Settings | None = None,
) -> None:
    """Outbox rows for a new statement or revision, keyed ``statement-<id>`` (so each is
    delivered once): the MQTT notice and webhook carry the document; a mail row (one per
    recipient address, only when SMTP is configured) carries just the statement's id, the
    sender reads the PDF and CSV when it sends."""
    from notify import outbox

    who = net.partner(partner)
    max_age = (
        timedelta(hours=settings.notify_max_age_h)
        if settings is not None
        else outbox.DEFAULT_MAX_AGE
    )
    revision = int(doc.get("revision") or 1)
    notice = {
        "event": "statement.issued" if revision == 1 else "statement.revised",
        "partner": partner,
        "month": label,
        "statement_id": statement_id,
        "issued_at": doc["issued_at"],
        "document_number": doc.get("document_number"),
        "revision": revision,
        "content_hash": doc["content_hash"],
        "previous_hash": doc.get("previous_hash"),
        "revision_reason": doc.get("revision_reason"),
        "incomplete_reason": doc.get("incomplete_reason"),
        "totals": doc["totals"],
    }
    deliveries: list[tuple[str, str]] = [("mqtt", STATEMENTS_TOPIC.format(partner=partner))]
    if who.webhook:
        deliveries.append(("webhook", who.webhook))
    event_key = f"statement-{statement_id}"
    await outbox.enqueue(
        conn,
        event_key=event_key,
        payload={**notice, "document": doc},
        deliveries=deliveries,
        max_age=max_age,
    )
    if settings is not None and settings.smtp_url and who.email:
        recipients = mail_recipients(who.email)
        if not recipients:
            log.warning("partner %s: no usable mail address in %r", partner, who.email)
        await outbox.enqueue(
            conn,
            event_key=event_key,
            payload={
                k: notice[k]
                for k in ("event", "partner", "month", "statement_id", "revision", "content_hash")
            },
            deliveries=[(outbox.Channel.mail, address) for address in recipients],
            max_age=max_age,
        )


def mail_recipients(field: str) -> list[str]:
    """A partner's ``email`` as outbox targets: one bare address each (the field may hold
    several, comma-separated, bare or as ``Name <address>``), so each is delivered and
    retried on its own."""
    found = (address.strip() for _, address in email.utils.getaddresses([field]))
    return list(dict.fromkeys(a for a in found if "@" in a and not any(c.isspace() for c in a)))


def previous_month(now: datetime, net: Network) -> tuple[int, int]:
    local = now.astimezone(net.tz)
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    return year, month


async def issue_due(
    conn: asyncpg.Connection,
    net: Network,
    now: datetime,
    grace: str,
    *,
    settings: Settings | None = None,
) -> list[Issued]:
    """Issue the statements that are due (see :func:`due_months_of`: last month once its
    grace period is over, and months held earlier) whose data is complete, oldest month
    first. A statement held for its data keeps a ``statement_held`` alert of its partner and
    month firing, naming the lines short of data; issuing it resolves the alert."""
    due = await due_months(conn, net, [p.id for p in net.partners], now, grace)
    by_month: dict[str, list[str]] = {}
    for partner, months in due.items():
        for label in months:
            by_month.setdefault(label, []).append(partner)
    out: list[Issued] = []
    targets = _alert_targets(settings)
    for label in sorted(by_month):
        year, month = parse_month(label)
        issued, held = await _issue(
            conn, net, year, month, now, partners=by_month[label], settings=settings
        )
        out.extend(i for i in issued if i.new)
        for h in held:
            verdict = evaluate_statement_held(
                h.partner, label, h.short, h.pending, net.statements.min_coverage
            )
            async with conn.transaction():
                await lifecycle.apply_verdict(
                    conn, held_subject(h.partner, label), verdict, now, targets=targets
                )
        if held:
            log.info(
                "statements for %s held, data incomplete: %s",
                label,
                "; ".join(f"{h.partner}: {h.describe()}" for h in held),
            )
    return out


async def issue_statements(engine: Engine, conn: asyncpg.Connection, now: datetime) -> int:
    """Last month's statements for the engine's network, once its grace period
    (SYMBIONT_STATEMENT_GRACE) is over: what the rules service issues after its passes."""
    topo = await engine.topology_for(conn)
    if topo is None:
        return 0
    issued = await issue_due(
        conn, topo.net, now, engine.settings.statement_grace, settings=engine.settings
    )
    return len(issued)


def utcnow() -> datetime:
    return datetime.now(UTC)
