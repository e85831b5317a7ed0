"""Statements: a partner's list, one statement as JSON, CSV or PDF, its revisions, and
issuing a month."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, status
from fastapi.responses import JSONResponse, Response

from api import params
from api.deps import READERS, Caller, State, allow, not_found
from api.params import invalid
from api.schemas import (
    IssueIncomplete,
    IssueRequest,
    IssueResult,
    Problem,
    RevisionList,
    StatementList,
)
from api.tokens import Role
from core.windows import month_bounds
from statements import csv_export, document
from statements.compute import month_label
from statements.issue import (
    IncompleteMonth,
    Issued,
    document_for,
    due_months,
    issue_month,
    render_pdf_for,
)
from statements.revise import revisions

router = APIRouter(
    prefix="/api/v1",
    tags=["statements"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

Reader = Annotated[Caller, Depends(allow(*READERS))]


def _month(text: str) -> tuple[int, int]:
    return params.month(text)  # ASCII digits only: int() would take "２０２６-11"


def _own(caller: Caller, partner: str) -> None:
    if partner not in caller.scope.partners:
        raise not_found("partner", partner)


@router.get("/partners/{partner_id}/statements", response_model=StatementList)
async def statements(partner_id: str, state: State, caller: Reader) -> dict[str, Any]:
    """Issued statements (their latest revision), the months due for issue that are held
    for their data (``held``), and the drafts of the open month and of the previous one
    until it falls due; newest first."""
    _own(caller, partner_id)
    net = caller.network
    now = datetime.now(UTC)
    async with state.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (month) month, issued_at, revision, content_hash, document_number"
            " FROM statements WHERE partner_id = $1 ORDER BY month DESC, revision DESC",
            partner_id,
        )
        held = (await due_months(conn, net, [partner_id], now, state.settings.statement_grace))[
            partner_id
        ]
    items = [
        {
            "month": r["month"],
            "status": "issued",
            "issued_at": r["issued_at"],
            "revision": r["revision"],
            "content_hash": r["content_hash"],
            "document_number": r["document_number"],
        }
        for r in rows
    ]
    listed = {r["month"] for r in rows}
    today = now.astimezone(net.tz)
    current = (today.year, today.month)
    previous = (today.year - 1, 12) if today.month == 1 else (today.year, today.month - 1)
    drafts = [month_label(*current), month_label(*previous)]
    for label in [*held, *drafts]:
        if label not in listed:
            listed.add(label)
            items.append(
                {
                    "month": label,
                    "status": "held" if label in held else "draft",
                    "issued_at": None,
                    "revision": None,
                    "content_hash": None,
                    "document_number": None,
                }
            )
    items.sort(key=lambda item: item["month"], reverse=True)
    return {"partner": partner_id, "items": items}


_TYPES = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}


def _format(request: Request, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    accept = request.headers.get("accept", "")
    for name, media in (("pdf", "application/pdf"), ("csv", "text/csv")):
        if media in accept:
            return name
    return "json"


@router.get(
    "/partners/{partner_id}/statements/{month}",
    response_class=Response,
    responses={
        200: {
            "description": "the statement: JSON, or CSV / PDF by `format` or `Accept`",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
)
async def statement(
    partner_id: str,
    month: str,
    request: Request,
    state: State,
    caller: Reader,
    format: Annotated[Literal["json", "csv", "pdf"] | None, Query()] = None,
    revision: Annotated[
        int | None, Query(ge=1, le=1_000_000, description="an earlier revision (default: latest)")
    ] = None,
) -> Response:
    """One statement: the issued one (its latest revision, or ``revision``) exactly as
    issued (same bytes, same content hash), or the live draft of a month not issued yet,
    whose ``status`` is ``held`` once the month is due for issue and waits for its data."""
    _own(caller, partner_id)
    year, mon = _month(month)
    net = caller.network
    start, _ = month_bounds(year, mon, net.tz)
    now = datetime.now(UTC)
    if start > now:
        raise not_found("statement", f"{partner_id}/{month}")
    label = month_label(year, mon)
    fmt = _format(request, format)
    async with state.pool.acquire() as conn:
        try:
            doc, csv, pdf = await document_for(
                conn,
                net,
                partner_id,
                label,
                now,
                grace=state.settings.statement_grace,
                revision=revision,
            )
        except LookupError:
            raise not_found("statement revision", f"{partner_id}/{label}/{revision}") from None
        if fmt == "pdf" and pdf is None:
            pdf = await render_pdf_for(conn, net, doc)
    rev = f"-r{doc['revision']}" if int(doc.get("revision") or 1) > 1 else ""
    name = f"statement-{partner_id}-{label}{rev}.{fmt}"
    headers = {"Content-Disposition": f'inline; filename="{name}"'}
    if fmt == "csv":
        body = csv if csv is not None else csv_export.render_csv(doc).encode()
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
    if fmt == "pdf":
        assert pdf is not None
        return Response(pdf, media_type="application/pdf", headers=headers)
    return Response(document.render_json(doc), media_type=_TYPES["json"], headers=headers)


@router.get(
    "/partners/{partner_id}/statements/{month}/revisions",
    response_model=RevisionList,
)
async def statement_revisions(
    partner_id: str, month: str, state: State, caller: Reader
) -> dict[str, Any]:
    """Every issued revision of the statement, oldest first: revision 1 is the statement as
    first issued, each later one carries its reason and the content hash of the revision it
    replaced (``previous_hash``); the latest is the statement. Empty while the month is not
    issued."""
    _own(caller, partner_id)
    year, mon = _month(month)
    label = month_label(year, mon)
    async with state.pool.acquire() as conn:
        items = await revisions(conn, partner_id, label)
    return {"partner": partner_id, "month": label, "items": items}


def _issued_json(i: Issued) -> dict[str, Any]:
    return {
        "partner": i.partner,
        "month": i.month,
        "new": i.new,
        "content_hash": i.content_hash,
        "revision": i.revision,
        "document_number": i.document_number,
        "incomplete_reason": i.incomplete_reason,
    }


@router.post(
    "/statements/{month}/issue",
    response_model=IssueResult,
    responses={
        409: {
            "model": IssueIncomplete,
            "description": "the month has not ended (`detail` only), or some statements were"
            " held back because their data is incomplete (the others are issued)",
        }
    },
)
async def issue(
    month: str,
    state: State,
    caller: Annotated[Caller, Depends(allow(Role.admin))],
    body: Annotated[IssueRequest | None, Body()] = None,
    accept_incomplete: Annotated[
        bool | None, Query(description="as in the body: issue incomplete statements too")
    ] = None,
    reason: Annotated[
        str | None, Query(max_length=2000, description="as in the body: why (required then)")
    ] = None,
) -> Any:
    """Issue every partner's statement for a month that has ended (idempotent: issued ones
    are left as they are and nothing is sent twice).

    A statement whose data is incomplete (a line under the network's
    ``statements.min_coverage``, or windows of the month not reconciled yet) is not issued:
    the answer is 409 with the statements issued and those held back, with their lines short
    of data. With ``accept_incomplete`` and a ``reason`` (in the JSON body, or as query
    parameters) those are issued too, the reason printed on them (``incomplete_reason``)."""
    year, mon = _month(month)
    accept = bool(accept_incomplete) or (body is not None and body.accept_incomplete)
    why = body.reason if body is not None and body.reason is not None else reason
    if accept and not (why and why.strip()):
        raise invalid("body", "reason", "accept_incomplete needs a reason")
    if why is not None and not accept:
        raise invalid("body", "reason", "reason goes with accept_incomplete")
    async with state.pool.acquire() as conn:
        try:
            issued = await issue_month(
                conn,
                caller.network,
                year,
                mon,
                datetime.now(UTC),
                settings=state.settings,
                accept_incomplete=why.strip() if accept and why else None,
            )
        except IncompleteMonth as exc:
            held = [
                {
                    "partner": h.partner,
                    "month": h.month,
                    "lines": [
                        {
                            "exchange": s.exchange,
                            "role": s.role,
                            "coverage": s.coverage,
                            "windows": s.windows,
                        }
                        for s in h.short
                    ],
                    "pending_windows": h.pending,
                }
                for h in exc.held
            ]
            return JSONResponse(
                {
                    "detail": f"{exc.headline}: issue them anyway with accept_incomplete"
                    " and a reason",
                    "month": exc.month,
                    "statements": [_issued_json(i) for i in exc.issued],
                    "held": held,
                },
                status_code=status.HTTP_409_CONFLICT,
            )
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)
    return {
        "month": month_label(year, mon),
        "statements": [_issued_json(i) for i in issued],
    }
