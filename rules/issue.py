"""Statements in the database: drafts computed on demand, issuing (idempotent, immutable,
with adjustments for issued months whose data changed), delivery through the outbox."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
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


async def month_windows(
    conn: asyncpg.Connection, net: Network, partner: str, year: int, month: int
) -> list[WindowRow]:
    exchanges = [ex.id for ex, _ in partner_exchanges(net, partner)]
    start, end = month_bounds(year, month, net.tz)
    rows = await conn.fetch(
        """SELECT exchange_id, window_start, window_end, sent, received, reconciled_sent,
                  reconciled_received, coverage, status
           FROM exchange_windows WHERE exchange_id = ANY($1::text[])
           AND window_start >= $2 AND window_start < $3 ORDER BY exchange_id, window_start""",
        exchanges,
        start,
        end,
    )
    return [WindowRow.from_mapping(dict(r)) for r in rows]


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


async def _adjustments(
    conn: asyncpg.Connection, net: Network, partner: str, label: str
) -> list[Adjustment]:
    """For every issued month before ``label``: what it billed (plus adjustments issued since)
    against the same month recomputed from today's windows."""
    issued = await conn.fetch(
        "SELECT month, document FROM statements WHERE partner_id = $1 AND month < $2 "
        "ORDER BY month",
        partner,
        label,
    )
    if not issued:
        return []
    docs = [json.loads(r["document"]) for r in issued]
    earlier: list[Adjustment] = [a for d in docs for a in adjustments_from_document(d)]
    out: list[Adjustment] = []
    for doc in docs:
        year, month = parse_month(doc["month"])
        before = with_adjustments(
            billed_lines(doc), [a for a in earlier if a.month == doc["month"]]
        )
        windows = await month_windows(conn, net, partner, year, month)
        now = build_statement(net, partner, year, month, windows)
        out.extend(compute_adjustments(before, billed_lines(now)))
    return out


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
    year, month = parse_month(doc["month"])
    windows = await month_windows(conn, net, doc["partner"], year, month)
    return render.render_pdf(doc, daily_series(net, doc["partner"], year, month, windows))


async def issue_month(
    conn: asyncpg.Connection,
    net: Network,
    year: int,
    month: int,
    now: datetime,
    *,
    settings: Settings | None = None,
) -> list[Issued]:
    """Issue every partner's statement for the month (idempotent: an issued one is left as
    it is and nothing is sent again).

    Each new statement is enqueued for delivery in its own transaction (``_enqueue_delivery``):
    the MQTT notice, the partner's webhook, and, when ``settings`` configure SMTP, a mail to
    the partner's address(es).  Without ``settings`` no mail is sent: callers that should mail
    pass the service's settings."""
    label = month_label(year, month)
    _, end = month_bounds(year, month, net.tz)
    if now < end:
        raise ValueError(f"month {label} has not ended yet (it ends {end.isoformat()})")
    out: list[Issued] = []
    alerts = await _alert_counts(conn, net, year, month)
    for partner in net.partners:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('statement:' || $1 || ':' || $2))",
                partner.id,
                label,
            )
            existing = await stored(conn, partner.id, label)
            if existing is not None:
                out.append(Issued(partner.id, label, existing["content_hash"], False))
                continue
            windows = await month_windows(conn, net, partner.id, year, month)
            statement = build_statement(
                net,
                partner.id,
                year,
                month,
                windows,
                status="issued",
                issued_at=now,
                alerts=alerts,
                adjustments=await _adjustments(conn, net, partner.id, label),
            )
            doc = render.statement_document(statement)
            text = render.render_json(doc).decode()
            csv = render.render_csv(doc).encode()
            daily = daily_series(net, partner.id, year, month, windows)
            # rendering a PDF takes about a second: off the event loop
            pdf = await asyncio.to_thread(render.render_pdf, doc, daily)
            statement_id = await conn.fetchval(
                """INSERT INTO statements (partner_id, month, issued_at, document, content_hash,
                                           csv, pdf)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
                partner.id,
                label,
                now,
                text,
                doc["content_hash"],
                csv,
                pdf,
            )
            await _enqueue_delivery(
                conn, net, partner.id, label, statement_id, doc, settings=settings
            )
            out.append(Issued(partner.id, label, doc["content_hash"], True))
            log.info("issued statement %s %s (%s)", partner.id, label, doc["content_hash"][:12])
    return out


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
    issued = await issue_month(conn, net, year, month, now, settings=settings)
    return [i for i in issued if i.new]


def utcnow() -> datetime:
    return datetime.now(UTC)
