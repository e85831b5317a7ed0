"""Statements in the database: drafts computed on demand, issuing (idempotent, immutable,
with adjustments for issued months whose data changed), delivery through the outbox."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from core.network import Network, parse_duration
from core.settings import Settings
from core.windows import month_bounds
from rules import render
from rules.statements import (
    Adjustment,
    DailySeries,
    Statement,
    WindowRow,
    adjustments_from_document,
    billed_lines,
    build_statement,
    compute_adjustments,
    daily_series,
    month_label,
    parse_month,
    partner_exchanges,
    with_adjustments,
)

log = logging.getLogger("symbiont.statements")

STATEMENTS_TOPIC = "symbiont/statements/{partner}"


@dataclass(frozen=True)
class Issued:
    partner: str
    month: str
    content_hash: str
    new: bool


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
    start, end = month_bounds(year, month, net.tz)
    rows = await conn.fetch(
        """SELECT subject, count(*) AS n FROM alerts WHERE subject_kind = 'exchange'
           AND started_at < $2 AND (resolved_at IS NULL OR resolved_at >= $1)
           GROUP BY subject""",
        start,
        end,
    )
    return {r["subject"]: int(r["n"]) for r in rows}


async def stored(conn: asyncpg.Connection, partner: str, month: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM statements WHERE partner_id = $1 AND month = $2", partner, month
    )
    return row


async def _adjustments_for(
    conn: asyncpg.Connection, net: Network, partners: Sequence[str], label: str
) -> dict[str, list[Adjustment]]:
    """Per partner, for every issued month before ``label``: what it billed (plus adjustments
    issued since) against the same month recomputed from today's windows. One query for the
    issued statements, one per earlier month for the windows of all the partners' exchanges."""
    issued = await conn.fetch(
        "SELECT partner_id, month, document FROM statements "
        "WHERE partner_id = ANY($1::text[]) AND month < $2 ORDER BY partner_id, month",
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
        earlier: list[Adjustment] = [a for d in docs[partner] for a in adjustments_from_document(d)]
        for doc in docs[partner]:
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
    conn: asyncpg.Connection, net: Network, partner: str, label: str, now: datetime
) -> tuple[dict[str, Any], bytes | None, bytes | None]:
    """The issued statement (document, CSV, PDF) if there is one, else the live draft's
    document and no stored renderings."""
    row = await stored(conn, partner, label)
    if row is not None:
        return json.loads(row["document"]), bytes(row["csv"]), bytes(row["pdf"])
    year, month = parse_month(label)
    return render.statement_document(await draft(conn, net, partner, year, month, now)), None, None


async def render_pdf_for(conn: asyncpg.Connection, net: Network, doc: dict[str, Any]) -> bytes:
    """The PDF of ``doc`` (a draft's, which is not stored), rendered off the event loop: it
    takes a good fraction of a second, which the API must not spend blocking other requests."""
    year, month = parse_month(doc["month"])
    windows = await month_windows(conn, net, doc["partner"], year, month)
    daily = daily_series(net, doc["partner"], year, month, windows)
    return await asyncio.to_thread(render.render_pdf, doc, daily)


# ------------------------------------------------------------------------------- issuing


@dataclass
class IssueTimings:
    """Where :func:`issue_month`'s time went, in seconds (pass one in to have it filled).

    The phases overlap (PDFs render in worker processes while the issuing process computes
    and stores), so they do not add up to the wall time."""

    compute: float = 0.0  # reading windows, alerts and issued statements; building documents
    json_csv: float = 0.0  # rendering JSON and CSV
    pdf: float = 0.0  # rendering PDFs, summed over the statements, wherever they rendered
    pdf_cpu: float = 0.0  # CPU seconds of that rendering
    pdf_wait: float = 0.0  # the issuing process waiting for PDFs (worker start-up included)
    store: float = 0.0  # inserting statements and outbox rows, committing
    pdfs: int = 0
    workers: int = 0  # processes rendering PDFs (0: a thread of the issuing process)


def pdf_workers(statements: int) -> int:
    """Worker processes for rendering ``statements`` PDFs: one per CPU this process may run
    on, no more than there are PDFs; 0 (render in a thread) when that is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    n = min(cpus, statements)
    return n if n > 1 else 0


class _PdfRenderer:
    """Renders statement PDFs in worker processes, or in a thread of this process when there
    is one worker or no processes can be started.

    The workers are forked from a fork server that has imported the renderer (and the main
    module) once, so a worker starts in milliseconds and the parent's threads and event loop
    are never forked. A PDF is a pure function of its inputs, so it is the same bytes
    wherever it is rendered."""

    def __init__(self, workers: int, timings: IssueTimings) -> None:
        self.timings = timings
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            try:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["__main__", "rules.render"])
                # the server imports the renderer while this process reads the database
                multiprocessing.forkserver.ensure_running()
                self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
            except (OSError, ValueError) as exc:  # no fork server here: render in a thread
                log.warning("rendering PDFs in this process (%s)", exc)
        timings.workers = workers if self.pool is not None else 0

    def submit(self, doc: dict[str, Any], daily: list[DailySeries]) -> _PdfJob:
        future: concurrent.futures.Future[tuple[bytes, float, float]] | None = None
        if self.pool is not None:
            with contextlib.suppress(BrokenProcessPool, RuntimeError):
                future = self.pool.submit(render.render_pdf_timed, doc, daily)
        return _PdfJob(self, doc, daily, future)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


@dataclass
class _PdfJob:
    renderer: _PdfRenderer
    doc: dict[str, Any]
    daily: list[DailySeries]
    future: concurrent.futures.Future[tuple[bytes, float, float]] | None

    async def result(self) -> bytes:
        t = self.renderer.timings
        began = time.perf_counter()
        if self.future is not None:
            try:
                pdf, wall, cpu = await asyncio.wrap_future(self.future)
            except BrokenProcessPool as exc:  # a worker died: render this one here
                log.warning("PDF worker failed (%s); rendering in this process", exc)
                self.future = None
        if self.future is None:
            # one at a time, off the event loop (a PDF takes a third of a second or more)
            pdf, wall, cpu = await asyncio.to_thread(render.render_pdf_timed, self.doc, self.daily)
        t.pdf_wait += time.perf_counter() - began
        t.pdf += wall
        t.pdf_cpu += cpu
        t.pdfs += 1
        return pdf


@dataclass
class _Prepared:
    partner: str
    doc: dict[str, Any]
    text: str
    csv: bytes
    pdf: _PdfJob


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
) -> list[Issued]:
    """Issue every partner's statement for the month (idempotent: an issued one is left as
    it is and nothing is sent again).

    The month's windows, alerts and earlier statements are read once for all partners; each
    statement is computed and rendered as JSON and CSV here while its PDF renders in a worker
    process (``workers``, default :func:`pdf_workers`; 0 or 1: in a thread of this process),
    then stored in a transaction of its own, under a per-statement advisory lock and only if
    no other issuer stored it first.

    Each new statement is enqueued for delivery in the transaction that stores it
    (``_enqueue_delivery``): the MQTT notice, the partner's webhook, and, when ``settings``
    configure SMTP, a mail to the partner's address(es).  Without ``settings`` no mail is
    sent: callers that should mail pass the service's settings.  ``timings``, when given, is
    filled with where the time went."""
    label = month_label(year, month)
    _, end = month_bounds(year, month, net.tz)
    if now < end:
        raise ValueError(f"month {label} has not ended yet (it ends {end.isoformat()})")
    t = timings if timings is not None else IssueTimings()
    began = time.perf_counter()
    done = {
        r["partner_id"]: r["content_hash"]
        for r in await conn.fetch(
            "SELECT partner_id, content_hash FROM statements WHERE month = $1", label
        )
    }
    todo = [p.id for p in net.partners if p.id not in done]
    results = {p: Issued(p, label, h, False) for p, h in done.items()}
    if not todo:
        t.compute += time.perf_counter() - began
        return [results[p.id] for p in net.partners if p.id in results]
    renderer = _PdfRenderer(pdf_workers(len(todo)) if workers is None else workers, t)
    try:
        alerts = await _alert_counts(conn, net, year, month)
        exchanges = list(dict.fromkeys(ex.id for p in todo for ex, _ in partner_exchanges(net, p)))
        windows = await _windows_by_exchange(conn, net, exchanges, year, month)
        adjustments = await _adjustments_for(conn, net, todo, label)
        t.compute += time.perf_counter() - began
        prepared: list[_Prepared] = []
        for partner in todo:
            began = time.perf_counter()
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
            doc = render.statement_document(statement)
            daily = daily_series(net, partner, year, month, rows)
            rendered = time.perf_counter()
            text = render.render_json(doc).decode()
            csv = render.render_csv(doc).encode()
            t.compute += rendered - began
            t.json_csv += time.perf_counter() - rendered
            prepared.append(_Prepared(partner, doc, text, csv, renderer.submit(doc, daily)))
            await asyncio.sleep(0)  # the event loop runs between statements
        for p in prepared:
            pdf = await p.pdf.result()
            began = time.perf_counter()
            results[p.partner] = await _store(conn, net, label, now, p, pdf, settings)
            t.store += time.perf_counter() - began
    finally:
        await renderer.close()
    return [results[p.id] for p in net.partners if p.id in results]


async def _store(
    conn: asyncpg.Connection,
    net: Network,
    label: str,
    now: datetime,
    p: _Prepared,
    pdf: bytes,
    settings: Settings | None,
) -> Issued:
    """Store one statement and enqueue its delivery, unless another issuer stored it first."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('statement:' || $1 || ':' || $2))",
            p.partner,
            label,
        )
        existing = await conn.fetchval(
            "SELECT content_hash FROM statements WHERE partner_id = $1 AND month = $2",
            p.partner,
            label,
        )
        if existing is not None:
            return Issued(p.partner, label, existing, False)
        statement_id = await conn.fetchval(
            """INSERT INTO statements (partner_id, month, issued_at, document, content_hash,
                                       csv, pdf)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
            p.partner,
            label,
            now,
            p.text,
            p.doc["content_hash"],
            p.csv,
            pdf,
        )
        await _enqueue_delivery(conn, net, p.partner, label, statement_id, p.doc, settings=settings)
    log.info("issued statement %s %s (%s)", p.partner, label, p.doc["content_hash"][:12])
    return Issued(p.partner, label, p.doc["content_hash"], True)


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
    """Outbox rows for a new statement, keyed ``statement-<id>``: the MQTT notice and webhook
    carry the document; a mail row (one per recipient address, only when SMTP is configured)
    carries just the statement's id, the sender reads the PDF and CSV when it sends."""
    from rules import notify

    who = net.partner(partner)
    max_age = (
        timedelta(hours=settings.notify_max_age_h)
        if settings is not None
        else notify.DEFAULT_MAX_AGE
    )
    notice = {
        "event": "statement.issued",
        "partner": partner,
        "month": label,
        "statement_id": statement_id,
        "issued_at": doc["issued_at"],
        "content_hash": doc["content_hash"],
        "totals": doc["totals"],
    }
    deliveries: list[tuple[str, str]] = [("mqtt", STATEMENTS_TOPIC.format(partner=partner))]
    if who.webhook:
        deliveries.append(("webhook", who.webhook))
    event_key = f"statement-{statement_id}"
    await notify.enqueue(
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
        await notify.enqueue(
            conn,
            event_key=event_key,
            payload={k: notice[k] for k in ("event", "partner", "month", "statement_id")}
            | {"content_hash": doc["content_hash"]},
            deliveries=[(notify.Channel.mail, address) for address in recipients],
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
    """Issue last month's statements once its grace period has passed."""
    year, month = previous_month(now, net)
    _, end = month_bounds(year, month, net.tz)
    if now < end + (parse_duration(grace) if grace else timedelta(days=3)):
        return []
    done = await conn.fetchval(
        "SELECT count(*) FROM statements WHERE month = $1", month_label(year, month)
    )
    if done >= len(net.partners):
        return []
    # Not while readings of the month still wait to be reconciled (after an outage, or a
    # backfill in progress): the statement would miss them and need adjustments next month.
    pending = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM dirty_windows WHERE window_start < $1)
               OR EXISTS (SELECT 1 FROM dirty_subjects WHERE window_start < $1)""",
        end,
    )
    if pending:
        log.info("statements for %s wait for pending windows", month_label(year, month))
        return []
    issued = await issue_month(conn, net, year, month, now, settings=settings)
    return [i for i in issued if i.new]


def utcnow() -> datetime:
    return datetime.now(UTC)
