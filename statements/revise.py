"""Revisions of an issued statement: an issued statement never changes, but it can be superseded
by a revision (:func:`revise_statement`) — revision n+1, issued, immutable and delivered like
the first, carrying its reason and the content hash of the revision it replaces. The latest
revision is the statement, and the next month's adjustments compare against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from core.network import Network
from core.settings import Settings
from statements import csv_export, document
from statements.adjustments import adjustments_from_document
from statements.compute import build_statement, daily_series, month_label
from statements.issue import (
    Held,
    IncompleteMonth,
    Issued,
    _alert_counts,
    _enqueue_delivery,
    _insert,
    _lock,
    document_numbers,
    issued_document,
    month_windows,
    pending_windows,
    shortfalls,
    stored,
)
from statements.pdf import render_pdf

log = logging.getLogger("symbiont.statements")

# ------------------------------------------------------------------------------ revisions


async def revise_statement(
    conn: asyncpg.Connection,
    net: Network,
    partner: str,
    year: int,
    month: int,
    now: datetime,
    reason: str,
    *,
    accept_incomplete: bool = False,
    settings: Settings | None = None,
) -> Issued:
    """Issue revision n+1 of the partner's issued statement for the month, recomputed from
    today's windows: issued, immutable and delivered like the first, carrying ``reason`` and
    the content hash of the revision it replaces. Its adjustments (for earlier months) are
    those of the revision it replaces: they were billed with it.

    Refused (ValueError) when the month is not issued, when nothing in the statement would
    change, when another month's statement carries adjustments for it (a revision would bill
    them twice: later changes go on the next statement), and, unless ``accept_incomplete``
    (then ``reason`` is printed as the reason for issuing incomplete data too), when its
    data is incomplete (:class:`IncompleteMonth`)."""
    label = month_label(year, month)
    reason = reason.strip()
    if not reason:
        raise ValueError("a revision needs a reason (--reason TEXT)")
    if partner not in {p.id for p in net.partners}:
        raise ValueError(f"unknown partner '{partner}'")
    async with conn.transaction():
        await _lock(conn, partner, label)
        current = await stored(conn, partner, label)
        if current is None:
            raise ValueError(
                f"the statement of {partner} for {label} is not issued: there is nothing to"
                f" revise (issue it: symbiont statements issue {label})"
            )
        later = await conn.fetch(
            "SELECT DISTINCT ON (month) month, revision, document FROM statements"
            " WHERE partner_id = $1 AND month > $2 ORDER BY month, revision DESC",
            partner,
            label,
        )
        for r in later:
            if any(a.month == label for a in adjustments_from_document(json.loads(r["document"]))):
                raise ValueError(
                    f"the statement of {partner} for {r['month']} already carries adjustments"
                    f" for {label}: a revision would bill them twice (later changes to {label}"
                    " appear as adjustments on the next statement)"
                )
        previous = json.loads(current["document"])
        rows = await month_windows(conn, net, partner, year, month)
        statement = build_statement(
            net,
            partner,
            year,
            month,
            rows,
            status="issued",
            issued_at=now,
            alerts=await _alert_counts(conn, net, year, month),
            adjustments=adjustments_from_document(previous),
        )
        short = shortfalls(statement, net.statements.min_coverage)
        pending = await pending_windows(conn, net, year, month)
        incomplete = bool(short or pending)
        if incomplete and not accept_incomplete:
            held = Held(partner, label, tuple(short), pending)
            raise IncompleteMonth(label, [held], [], net.statements.min_coverage)
        if _same_content(document.statement_document(statement), previous):
            raise ValueError(
                f"nothing to revise: revision {current['revision']} of the statement of"
                f" {partner} for {label} already holds what the data gives today"
            )
        (number,) = await document_numbers(conn, net, now, 1)
        doc = issued_document(
            statement,
            document_number=number,
            revision=current["revision"] + 1,
            supersedes={
                "revision": current["revision"],
                "document_number": current["document_number"],
            },
            previous_hash=current["content_hash"],
            revision_reason=reason,
            incomplete_reason=reason if incomplete else None,
        )
        text = document.render_json(doc).decode()
        csv = csv_export.render_csv(doc).encode()
        daily = daily_series(net, partner, year, month, rows)
        pdf = await asyncio.to_thread(render_pdf, doc, daily)
        statement_id = await _insert(conn, label, now, doc, text, csv, pdf)
        await _enqueue_delivery(conn, net, partner, label, statement_id, doc, settings=settings)
    log.info(
        "revised statement %s %s: revision %d, document %s (%s): %s",
        partner,
        label,
        doc["revision"],
        number,
        doc["content_hash"][:12],
        reason,
    )
    return Issued(
        partner,
        label,
        doc["content_hash"],
        True,
        revision=doc["revision"],
        document_number=number,
        incomplete_reason=doc["incomplete_reason"],
    )


# what a revision may leave as it was without being a different statement
_ISSUE_FIELDS = frozenset(
    {
        "status",
        "issued_at",
        "as_of",
        "content_hash",
        "document_number",
        "revision",
        "supersedes",
        "previous_hash",
        "revision_reason",
        "incomplete_reason",
    }
)


def _same_content(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether two statement documents say the same apart from when and how they were
    issued."""

    def body(doc: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k not in _ISSUE_FIELDS}

    return body(new) == body(old)


async def revisions(conn: asyncpg.Connection, partner: str, label: str) -> list[dict[str, Any]]:
    """Every issued revision of a partner's statement for a month, oldest first."""
    rows = await conn.fetch(
        """SELECT revision, issued_at, reason, content_hash, previous_hash, document_number,
                  incomplete_reason
           FROM statements WHERE partner_id = $1 AND month = $2 ORDER BY revision""",
        partner,
        label,
    )
    return [dict(r) for r in rows]
