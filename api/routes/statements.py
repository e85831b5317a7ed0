"""Statements: a partner's list, one statement as JSON, CSV or PDF, and issuing a month."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse, Response

from api import params
from api.deps import READERS, Caller, State, allow, not_found
from api.schemas import IssueResult, Problem, StatementList
from api.tokens import Role
from core.windows import month_bounds
from rules import render
from rules.issue import document_for, issue_month, render_pdf_for
from rules.statements import month_label

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
    """Issued statements (newest first) and the drafts of the open and not yet issued
    previous month."""
    _own(caller, partner_id)
    net = caller.network
    rows = await state.pool.fetch(
        "SELECT month, issued_at, revision, content_hash FROM statements"
        " WHERE partner_id = $1 ORDER BY month DESC",
        partner_id,
    )
    items = [
        {
            "month": r["month"],
            "status": "issued",
            "issued_at": r["issued_at"],
            "revision": r["revision"],
            "content_hash": r["content_hash"],
        }
        for r in rows
    ]
    issued = {r["month"] for r in rows}
    today = datetime.now(net.tz)
    current = (today.year, today.month)
    previous = (today.year - 1, 12) if today.month == 1 else (today.year, today.month - 1)
    for year, month in (current, previous):
        label = month_label(year, month)
        if label not in issued:
            items.append(
                {
                    "month": label,
                    "status": "draft",
                    "issued_at": None,
                    "revision": None,
                    "content_hash": None,
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
            "description": "the statement (SPEC §7): JSON, or CSV / PDF by `format` or `Accept`",
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
) -> Response:
    """One statement: the issued one exactly as issued (same bytes, same content hash), or
    the live draft of a month not issued yet."""
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
        doc, csv, pdf = await document_for(conn, net, partner_id, label, now)
        if fmt == "pdf" and pdf is None:
            pdf = await render_pdf_for(conn, net, doc)
    name = f"statement-{partner_id}-{label}.{fmt}"
    headers = {"Content-Disposition": f'inline; filename="{name}"'}
    if fmt == "csv":
        body = csv if csv is not None else render.render_csv(doc).encode()
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
    if fmt == "pdf":
        assert pdf is not None
        return Response(pdf, media_type="application/pdf", headers=headers)
    return Response(render.render_json(doc), media_type=_TYPES["json"], headers=headers)


@router.post(
    "/statements/{month}/issue",
    response_model=IssueResult,
    responses={409: {"model": Problem}},
)
async def issue(
    month: str, state: State, caller: Annotated[Caller, Depends(allow(Role.admin))]
) -> Any:
    """Issue every partner's statement for a month that has ended (idempotent: issued ones
    are left as they are and nothing is sent twice)."""
    year, mon = _month(month)
    async with state.pool.acquire() as conn:
        try:
            issued = await issue_month(
                conn, caller.network, year, mon, datetime.now(UTC), settings=state.settings
            )
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)
    return {
        "month": month_label(year, mon),
        "statements": [
            {"partner": i.partner, "month": i.month, "new": i.new, "content_hash": i.content_hash}
            for i in issued
        ],
    }
