"""Statements as an invoice basis: a document number, both parties with their addresses and
VAT ids, money subtotalled per counterparty, payment terms, times in the network's zone with
their offset, savings apart from the amounts owed, and line alert counts that include the
exchange's meters. The PDF is read back the way a person and an accountant's tools read it:
rendered to PNG with pdftoppm, its text and word boxes taken with pdftotext.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import html
import io
import itertools
import json
import re
import shutil
import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_statements import EXAMPLES, kalundborg, rows_from, truth_for

from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network, load_applied
from core.db import asyncpg_dsn
from core.network import Network, NetworkError, parse_network
from core.settings import Settings
from core.windows import human_time, month_bounds
from notify.mail import statement_mail
from rules.engine import Engine
from statements.adjustments import billed_lines, compute_adjustments
from statements.alert_counts import month_alert_counts
from statements.compute import (
    AlertSpan,
    Statement,
    build_statement,
    daily_series,
    exchange_alert_counts,
)
from statements.csv_export import render_csv
from statements.document import statement_document, verify_hash
from statements.issue import issue_month, stored
from statements.pdf import render_pdf

# 13:50:12.068851 UTC on 4 November: 14:50 in Copenhagen, standard time (+01:00)
ISSUED_AT = datetime(2026, 11, 4, 13, 50, 12, 68851, tzinfo=UTC)
NUMBER = "kalundborg-2026-00042"


def money(value: str | Decimal) -> str:
    """An amount as the PDF prints it: thousands separated, a true minus sign."""
    return f"{Decimal(value):,f}".replace("-", "−")


def novo_october(**kw: Any) -> Statement:
    """Novo's October: it pays two providers (Ørsted Asnæs for steam, Kalundborg Forsyning
    for water) and is paid by one (the pig-feed cooperative, for yeast slurry)."""
    net = kalundborg()
    rows = rows_from(truth_for(net, 2026, 10))
    return build_statement(net, "novo", 2026, 10, rows, status="issued", issued_at=ISSUED_AT, **kw)


# ----------------------------------------------------------------------------- the times


def test_issue_time_is_shown_in_the_networks_zone_with_its_offset() -> None:
    """The issue time was printed as "4 Nov 2026 14:50 (UTC.068851+01:00)": the offset was
    cut out of the ISO text at a fixed place, which fails whenever the instant has
    microseconds (every issued statement)."""
    assert human_time("2026-11-04T14:50:12.068851+01:00") == "2026-11-04 14:50 +01:00"
    assert human_time("2026-11-04T13:50:12.068851+00:00", "Europe/Copenhagen") == (
        "2026-11-04 14:50 +01:00"
    )
    assert human_time("2026-10-05T09:00:00.5+00:00", "Europe/Copenhagen") == (
        "2026-10-05 11:00 +02:00"
    )
    assert human_time("2026-03-01T00:00:00-05:30") == "2026-03-01 00:00 -05:30"

    doc = statement_document(novo_october(document_number=NUMBER))
    assert doc["issued_at"] == "2026-11-04T14:50:12.068851+01:00"
    text = "\n".join(pdf_text(render_pdf(doc)))
    assert "Issued" in text and "2026-11-04 14:50 +01:00" in text
    assert not re.search(r"UTC\.\d", text)
    assert set(re.findall(r"\d\d:\d\d ([+-]\d\d:\d\d)", text)) == {"+01:00", "+02:00"}
    # the CSV carries the same instant, in the same zone with the same offset
    frame = pd.read_csv(io.StringIO(render_csv(doc)), dtype=str)
    assert set(frame["issued_at"]) == {doc["issued_at"]}
    # and so does the mail that carries the statement
    mail = statement_mail(
        doc, csv=b"", pdf=b"", sender="s@park.example", recipient="r@novo.example",
        message_id="<1@park.example>",
    )  # fmt: skip
    body = mail.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert "Issued: 2026-11-04 14:50 +01:00" in content
    assert f"Document number: {NUMBER}" in content
    assert "Period: 2026-10-01 00:00 +02:00 to 2026-11-01 00:00 +01:00" in content


# ---------------------------------------------------------------------------- the alerts


def test_line_alerts_count_the_exchanges_meters_during_the_month() -> None:
    """A line whose bill a counter reset and a gap changed showed 0 alerts: only alerts on
    the exchange itself were counted. Alerts on its meters (sent and received) that were
    firing at some time in the month count too."""
    net = kalundborg()
    start, end = month_bounds(2026, 10, net.tz)
    ex = next(e for e in net.exchanges if e.id == "steam-asnaes-novo")
    sent, received = ex.sent[0], ex.received[0]
    mid = start + timedelta(days=10)
    spans = [
        AlertSpan("meter", sent, mid, mid + timedelta(minutes=1)),  # counter reset
        AlertSpan("meter", received, start - timedelta(days=2), start + timedelta(hours=5)),
        AlertSpan("exchange", ex.id, end - timedelta(hours=1)),  # still firing
        # not in the month: resolved as it began, begun as it ended
        AlertSpan("meter", sent, start - timedelta(days=3), start),
        AlertSpan("meter", received, end, None),
        # not about this exchange
        AlertSpan("partner", "novo", mid, None),
        AlertSpan("meter", "novo-water-in", mid, None),
        AlertSpan("exchange", "no-such-exchange", mid, None),
    ]
    counts = exchange_alert_counts(net, spans, start, end)
    assert counts["steam-asnaes-novo"] == 3
    water = next(e for e in net.exchanges if "novo-water-in" in e.received)
    assert counts[water.id] == 1
    assert "no-such-exchange" not in counts
    st = novo_october(alerts=counts)
    by_exchange = {ln.exchange: ln.alerts for ln in st.lines}
    assert by_exchange["steam-asnaes-novo"] == 3
    assert by_exchange[water.id] == 1
    assert sum(by_exchange.values()) == 4


def test_an_alert_on_a_shared_meter_counts_on_each_of_its_exchanges() -> None:
    data = copy.deepcopy(NETWORK)
    data["partners"].append({"id": "yard", "name": "Shipyard"})
    data["meters"].append({**data["meters"][1], "id": "yard-in", "partner": "yard"})
    data["exchanges"].append(
        {**data["exchanges"][0], "id": "heat-yard", "receiver": "yard", "received": ["yard-in"]}
    )
    net = parse_network(data)
    start, end = month_bounds(2026, 10, net.tz)
    spans = [AlertSpan("meter", "out", start, None), AlertSpan("meter", "yard-in", start, None)]
    assert exchange_alert_counts(net, spans, start, end) == {"heat": 1, "heat-yard": 2}


# ------------------------------------------------------------------------ the content


def test_parties_subtotals_payment_terms_and_savings() -> None:
    net = kalundborg()
    st = novo_october(document_number=NUMBER)
    doc = statement_document(st)
    assert verify_hash(doc)
    assert doc["document_number"] == NUMBER
    # both parties: the partner and every counterparty, as the network file names them
    partner = doc["parties"]["partner"]
    novo = net.partner("novo")
    assert partner == {
        "id": "novo",
        "name": novo.name,
        "address": novo.address,
        "vat_id": novo.vat_id,
    }
    counterparties = [p["id"] for p in doc["parties"]["counterparties"]]
    assert counterparties == list(dict.fromkeys(ln["counterparty"] for ln in doc["lines"]))
    assert set(counterparties) == {"asnaes", "forsyning", "farms"}
    for p in doc["parties"]["counterparties"]:
        src = net.partner(p["id"])
        assert (p["name"], p["address"], p["vat_id"]) == (src.name, src.address, src.vat_id)
        assert p["address"] and re.fullmatch(r"DK\d{8}", p["vat_id"])
    for ln in doc["lines"]:
        assert ln["counterparty_name"] == net.partner(ln["counterparty"]).name

    # what Novo owes its two providers is no longer one lump: one subtotal each
    subtotals = {s["counterparty"]: s for s in doc["subtotals"]}
    assert list(subtotals) == counterparties
    for cp, sub in subtotals.items():
        mine = [ln for ln in doc["lines"] if ln["counterparty"] == cp]
        receivable = sum(
            (Decimal(ln["amount"]) for ln in mine if ln["role"] == "provider"), Decimal("0.00")
        )
        payable = sum(
            (Decimal(ln["amount"]) for ln in mine if ln["role"] == "receiver"), Decimal("0.00")
        )
        assert sub["currency"] == "EUR"
        assert sub["counterparty_name"] == net.partner(cp).name
        assert (Decimal(sub["receivable"]), Decimal(sub["payable"])) == (receivable, payable)
        assert Decimal(sub["net_amount"]) == receivable - payable
        assert re.fullmatch(r"-?\d+\.\d{2}", sub["net_amount"])
    assert Decimal(subtotals["asnaes"]["payable"]) > 0
    assert Decimal(subtotals["forsyning"]["payable"]) > 0
    assert Decimal(subtotals["farms"]["receivable"]) > 0
    for key in ("receivable", "payable", "net_amount"):
        assert sum(Decimal(s[key]) for s in doc["subtotals"]) == Decimal(doc["totals"][key])

    # savings and CO2 avoided have a section of their own; the totals stay as they were
    assert doc["savings"]["avoided_cost"] == doc["totals"]["avoided_cost"]
    assert doc["savings"]["net_savings"] == doc["totals"]["net_savings"]
    assert doc["savings"]["co2_avoided_t"] == doc["totals"]["co2_avoided_t"]
    for kind, t in doc["totals"]["by_kind"].items():
        assert doc["savings"]["by_kind"][kind]["net_savings"] == t["net_savings"]
    assert not {"receivable", "payable", "net_amount"} & set(doc["savings"])
    assert doc["payment_terms"] == net.statements.payment_terms
    assert "Net 30 days" in doc["payment_terms"]


def test_a_draft_has_no_document_number() -> None:
    net = kalundborg()
    rows = rows_from(truth_for(net, 2026, 10))
    draft = build_statement(net, "novo", 2026, 10, rows, as_of=ISSUED_AT)
    doc = statement_document(draft)
    assert doc["document_number"] is None and doc["status"] == "draft"
    with pytest.raises(ValueError, match="document number"):
        build_statement(net, "novo", 2026, 10, rows, as_of=ISSUED_AT, document_number=NUMBER)
    with pytest.raises(ValueError, match="document number"):
        novo_october(document_number="  ")
    text = "\n".join(pdf_text(render_pdf(doc)))
    assert "DRAFT — not an invoice" in text
    assert "Document no." in text and NUMBER not in text


def test_adjustments_count_in_the_subtotal_of_their_counterparty() -> None:
    net = kalundborg()
    sept = build_statement(
        net, "novo", 2026, 9, rows_from(truth_for(net, 2026, 9)), status="issued",
        issued_at=ISSUED_AT - timedelta(days=30),
    )  # fmt: skip
    before = [
        dataclasses.replace(
            ln, billed=ln.billed - Decimal("10.000"), amount=ln.amount - Decimal("265.00")
        )
        if ln.exchange == "steam-asnaes-novo"
        else ln
        for ln in billed_lines(sept)
    ]
    (adj,) = compute_adjustments(before, billed_lines(sept))
    assert adj.exchange == "steam-asnaes-novo" and adj.delta_amount == Decimal("265.00")
    plain = novo_october()
    adjusted = novo_october(adjustments=[adj])
    subs = {s.counterparty: s for s in adjusted.subtotals}
    plain_subs = {s.counterparty: s for s in plain.subtotals}
    assert subs["asnaes"].payable == plain_subs["asnaes"].payable + Decimal("265.00")
    assert subs["forsyning"] == plain_subs["forsyning"]
    assert adjusted.totals.payable == sum(s.payable for s in adjusted.subtotals)
    frame = pd.read_csv(io.StringIO(render_csv(adjusted)), dtype=str)
    row = frame[frame["record"] == "adjustment"].iloc[0]
    assert (row["counterparty"], row["counterparty_name"]) == ("asnaes", net.partner("asnaes").name)


def test_csv_has_the_parties_document_number_subtotals_and_terms() -> None:
    net = kalundborg()
    doc = statement_document(novo_october(document_number=NUMBER))
    frame = pd.read_csv(io.StringIO(render_csv(doc)), dtype=str)
    # the rows every statement had come first, as before
    records = list(frame["record"])
    assert records[: len(doc["lines"])] == ["line"] * len(doc["lines"])
    assert records.index("party") > max(i for i, r in enumerate(records) if r == "total")
    assert set(frame["document_number"]) == {NUMBER}
    assert set(frame["partner_name"]) == {net.partner("novo").name}
    parties = frame[frame["record"] == "party"]
    me = parties[parties["role"] == "partner"].iloc[0]
    assert (me["partner"], me["address"], me["vat_id"]) == (
        "novo",
        net.partner("novo").address,
        net.partner("novo").vat_id,
    )
    others = parties[parties["role"] == "counterparty"]
    assert list(others["counterparty"]) == [p["id"] for p in doc["parties"]["counterparties"]]
    for _, p in others.iterrows():
        src = net.partner(p["counterparty"])
        assert (p["counterparty_name"], p["address"], p["vat_id"]) == (
            src.name,
            src.address,
            src.vat_id,
        )
    lines = frame[frame["record"] == "line"]
    assert list(lines["counterparty_name"]) == [ln["counterparty_name"] for ln in doc["lines"]]
    subs = frame[frame["record"] == "subtotal"]
    assert [
        (r["counterparty"], r["receivable"], r["payable"], r["net_amount"])
        for _, r in subs.iterrows()
    ] == [
        (s["counterparty"], s["receivable"], s["payable"], s["net_amount"])
        for s in doc["subtotals"]
    ]
    terms = frame[frame["record"] == "payment_terms"]
    assert list(terms["payment_terms"]) == [net.statements.payment_terms]


# --------------------------------------------------------------------------- the PDF


def pdf_text(pdf: bytes) -> list[str]:
    """The text of each page, laid out as on the page (pdftotext -layout)."""
    out = subprocess.run(
        [_tool("pdftotext"), "-layout", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode("utf-8")
    return out.split("\f")[:-1]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian: poppler-utils)"
    return path


_WORD = re.compile(
    r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>'
)


def pdf_words(pdf: bytes) -> list[list[tuple[float, float, float, float, str]]]:
    """Per page, every word with its box in points (x0, y0, x1, y1; y down)."""
    out = subprocess.run(
        [_tool("pdftotext"), "-bbox", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode("utf-8")
    pages = out.split("<page ")[1:]
    return [
        [
            (float(a), float(b), float(c), float(d), html.unescape(w))
            for a, b, c, d, w in _WORD.findall(page)
        ]
        for page in pages
    ]


def _joined(
    row: list[tuple[float, float, float, float, str]],
) -> list[tuple[float, float, float, float, str]]:
    """The words of a row with those that touch joined (a minus sign drawn on its own)."""
    out: list[tuple[float, float, float, float, str]] = []
    for w in row:
        if out and w[0] - out[-1][2] < 0.5:
            x0, y0, _, y1, text = out[-1]
            out[-1] = (x0, y0, w[2], y1, text + w[4])
        else:
            out.append(w)
    return out


def test_issued_pdf_reads_as_an_invoice(tmp_path: Path) -> None:
    net = kalundborg()
    rows = rows_from(truth_for(net, 2026, 10))
    doc = statement_document(novo_october(document_number=NUMBER))
    pdf = render_pdf(doc, daily_series(net, "novo", 2026, 10, rows))
    path = tmp_path / "novo-2026-10.pdf"
    path.write_bytes(pdf)

    # it renders: one PNG per page, A4 landscape, with ink on it
    subprocess.run(
        [_tool("pdftoppm"), "-r", "50", "-png", str(path), str(tmp_path / "page")], check=True
    )
    pngs = sorted(tmp_path.glob("page-*.png"))
    pages = pdf_text(pdf)
    assert len(pngs) == len(pages) == 3
    for png in pngs:
        with Image.open(png) as image:
            width, height = image.size
            assert abs(width - 11.69 * 50) <= 1 and abs(height - 8.27 * 50) <= 1
            darkest, lightest = image.convert("L").getextrema()
            assert lightest == 255 and darkest < 80

    first = " ".join(pages[0].split())
    everything = " ".join(" ".join(pages).split())
    assert f"Document no. Issued Currency Statement period (Europe/Copenhagen) {NUMBER} " in first
    assert "2026-11-04 14:50 +01:00" in first
    assert "2026-10-01 00:00 +02:00 – 2026-11-01 00:00 +01:00" in first
    assert not re.search(r"UTC\.\d", everything)
    # both parties: names, addresses, VAT ids
    for party in [doc["parties"]["partner"], *doc["parties"]["counterparties"]]:
        for key in ("name", "address", "vat_id"):
            assert party[key] in first, (party["id"], key)
    assert net.statements.payment_terms
    assert net.statements.payment_terms in everything
    assert "Savings and CO2 avoided (not amounts owed)" in everything

    # the subtotals: one row per counterparty with its VAT id and its three amounts, which
    # stand right-aligned in their columns
    words = pdf_words(pdf)
    rows_at: dict[str, tuple[float, list[tuple[float, float, float, float, str]]]] = {}
    for page in words:
        for sub in doc["subtotals"]:
            vat = next(
                p["vat_id"]
                for p in doc["parties"]["counterparties"]
                if p["id"] == sub["counterparty"]
            )
            hits = [w for w in page if w[4] == vat]
            if len(hits) >= 2:  # the counterparties table, then the subtotals
                y = hits[-1][3]
                row = _joined(sorted(w for w in page if abs(w[3] - y) < 0.5))
                rows_at[sub["counterparty"]] = (y, row)
    assert sorted(rows_at) == sorted(s["counterparty"] for s in doc["subtotals"])
    right_edges: list[set[float]] = [set(), set(), set()]
    for sub in doc["subtotals"]:
        _, row = rows_at[sub["counterparty"]]
        texts = [w[4] for w in row]
        assert texts[-3:] == [
            money(sub["receivable"]),
            money(sub["payable"]),
            money(sub["net_amount"]),
        ]
        assert " ".join(texts).startswith(sub["counterparty_name"])
        for k, w in enumerate(row[-3:]):
            right_edges[k].add(round(w[2], 1))
    assert all(len(edges) == 1 for edges in right_edges), right_edges
    assert "Subtotals per counterparty (EUR)" in everything


@pytest.mark.parametrize("partner", ["asnaes", "novo", "forsyning", "kemira"])
def test_no_text_overlaps_on_any_page(partner: str) -> None:
    """On every page, the words of one line (one baseline, one size) do not run into each
    other (columns are wide enough for what they hold), and nothing crosses the margins."""
    net = kalundborg()
    rows = rows_from(truth_for(net, 2026, 10))
    # every exchange of September once more as an adjustment: long labels, wide figures
    sept = billed_lines(build_statement(net, partner, 2026, 9, rows_from(truth_for(net, 2026, 9))))
    st = build_statement(
        net, partner, 2026, 10, rows, status="issued", issued_at=ISSUED_AT,
        document_number=NUMBER, adjustments=compute_adjustments([], sept),
    )  # fmt: skip
    assert len(st.adjustments) == len(sept)
    pdf = render_pdf(statement_document(st), daily_series(net, partner, 2026, 10, rows))
    for number, page in enumerate(pdf_words(pdf), start=1):
        lines: dict[tuple[float, float], list[tuple[float, float]]] = defaultdict(list)
        for x0, y0, x1, y1, _ in page:
            lines[(round(y1, 1), round(y1 - y0, 1))].append((x0, x1))
            assert x0 >= 36 - 1 and x1 <= 11.69 * 72 - 36 + 1, (partner, number, x0, x1)
        for key, spans in lines.items():
            spans.sort()
            for (_, end), (begin, _) in itertools.pairwise(spans):
                assert end <= begin + 0.2, (partner, number, key, spans)


def test_a_document_issued_before_renders_too() -> None:
    """Documents stored before the invoice fields existed still render (their counterparties
    named from their lines)."""
    doc = statement_document(novo_october())
    old = {
        k: v
        for k, v in doc.items()
        if k not in ("document_number", "parties", "subtotals", "savings", "payment_terms")
    }
    old["version"] = 1
    text = " ".join(" ".join(pdf_text(render_pdf(old))).split())
    assert "Subtotals per counterparty" not in text
    for ln in doc["lines"]:
        assert ln["counterparty_name"] in text
    frame = pd.read_csv(io.StringIO(render_csv(old)), dtype=str)
    parties = frame[frame["record"] == "party"]
    assert list(parties["role"]) == ["partner", "counterparty", "counterparty", "counterparty"]
    assert frame["document_number"].isna().all()


# ------------------------------------------------------------------- the network file


def _kalundborg_data() -> dict[str, Any]:
    loaded = yaml.safe_load((EXAMPLES / "kalundborg.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(NetworkError) as caught:
        parse_network(data)
    return caught.value.problems


def test_example_names_addresses_vat_ids_and_terms() -> None:
    net = kalundborg()
    for p in net.partners:
        assert p.address and p.address.endswith("Denmark")
        assert p.vat_id and re.fullmatch(r"DK\d{8}", p.vat_id)
    assert len({p.vat_id for p in net.partners}) == len(net.partners)
    assert net.statements.min_coverage == 0.99
    assert net.statements.payment_terms and "\n" not in net.statements.payment_terms


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("vat_id", "dk12345678", "is not a country code and 2-18 capital letters or digits"),
        ("vat_id", "DK 12 34 56 78", "no spaces or punctuation"),
        ("vat_id", "DK", "is not a country code"),
        ("vat_id", "", "is not a country code"),
        ("vat_id", 12345678, "valid string"),
        ("address", "", "address is empty"),
        ("address", "   ", "address is empty"),
        ("address", "x" * 201, "address is 201 characters long (at most 200)"),
        ("address", "Kyndbyvej 15\n4400 Kalundborg", "write it on one line"),
        ("address", "Kyndbyvej 15\t4400", "control character"),
    ],
)
def test_bad_address_or_vat_id_is_named(field: str, value: Any, message: str) -> None:
    data = _kalundborg_data()
    data["partners"][2][field] = value
    (problem,) = problems(data)
    assert problem.startswith(f"partners[2].{field}: ") and message in problem, problem


@pytest.mark.parametrize(
    "settings,where",
    [
        ({"min_coverage": 0}, "statements.min_coverage"),
        ({"min_coverage": 1.01}, "statements.min_coverage"),
        ({"min_coverage": -0.5}, "statements.min_coverage"),
        ({"min_coverage": float("nan")}, "statements.min_coverage"),
        ({"payment_terms": ""}, "statements.payment_terms"),
        ({"payment_terms": "x" * 1001}, "statements.payment_terms"),
        ({"payment_terms": "Net 30\x07"}, "statements.payment_terms"),
        ({"grace": "3d"}, "statements.grace"),
    ],
)
def test_bad_statement_settings_are_named(settings: dict[str, Any], where: str) -> None:
    data = _kalundborg_data()
    data["statements"] = settings
    (problem,) = problems(data)
    assert problem.startswith(f"{where}: "), problem


def test_statement_settings_are_optional() -> None:
    data = _kalundborg_data()
    del data["statements"]
    for p in data["partners"]:
        p.pop("address"), p.pop("vat_id")
    net = parse_network(data)
    assert (net.statements.min_coverage, net.statements.payment_terms) == (0.99, None)
    data["statements"] = {"min_coverage": 1, "payment_terms": "Net 30 days.\nIBAN DK50 0040"}
    assert parse_network(data).statements.payment_terms == "Net 30 days.\nIBAN DK50 0040"
    # without addresses, VAT ids or terms the statement still names both parties
    rows = rows_from(truth_for(net, 2026, 10))
    doc = statement_document(
        build_statement(net, "novo", 2026, 10, rows, status="issued", issued_at=ISSUED_AT)
    )
    assert doc["payment_terms"] is None and doc["document_number"] is None
    assert all(p["address"] is None for p in doc["parties"]["counterparties"])
    text = "\n".join(pdf_text(render_pdf(doc)))
    assert "Payment terms" not in text
    assert all(p["name"] in text for p in doc["parties"]["counterparties"])


# ----------------------------------------------------------------------- the database

NETWORK: dict[str, Any] = {
    "network": "invoices",
    "name": "Invoice park",
    "timezone": "Europe/Copenhagen",
    "partners": [
        {
            "id": "plant",
            "name": "Harbour Power Station A/S",
            "address": "Havnevej 1, 4400 Kalundborg, Denmark",
            "vat_id": "DK11223344",
        },
        {
            "id": "town",
            "name": "Town District Heating",
            "address": "Torvet 2, 4400 Kalundborg, Denmark",
            "vat_id": "DK55667788",
        },
    ],
    "statements": {"payment_terms": "Net 30 days from the statement date."},
    "meters": [
        {
            "id": "out",
            "partner": "plant",
            "kind": "heat",
            "reading": "total",
            "unit": "MWh",
            "uncertainty": 0.01,
            "interval": 300,
        },
        {
            "id": "in",
            "partner": "town",
            "kind": "heat",
            "reading": "total",
            "unit": "MWh",
            "uncertainty": 0.01,
            "interval": 300,
        },
    ],
    "exchanges": [
        {
            "id": "heat",
            "provider": "plant",
            "receiver": "town",
            "kind": "heat",
            "sent": ["out"],
            "received": ["in"],
            "loss": 0.05,
            "nominal": 4.0,
            "terms": [{"from": "2026-01-01", "price": "30.00"}],
        },
    ],
}
SEPT = datetime(2026, 8, 31, 22, tzinfo=UTC)  # 1 September, Copenhagen
NOV = datetime(2026, 10, 31, 23, tzinfo=UTC)
ISSUE_SEPT = datetime(2026, 10, 5, 7, 30, 0, 250000, tzinfo=UTC)  # 09:30 in Copenhagen (+02:00)


def test_apply_keeps_addresses_vat_ids_and_terms(database_url: str) -> None:
    """``network apply`` stores the whole network document, so the parties' addresses and
    VAT ids and the statement settings come back with it and reach the issued statement."""
    net = parse_network(NETWORK)

    async def go() -> None:
        conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, net)
            assert await load_applied(conn) == net
            assert (await apply_network(conn, net)).unchanged
            await write_simulation(asyncpg_dsn(database_url), net, SEPT, NOV, seed=3)
            await Engine(Settings(database_url=database_url)).process_pending(conn, now=NOV)
            applied = await load_applied(conn)
            assert applied is not None
            await issue_month(conn, applied, 2026, 9, ISSUE_SEPT)
            row = await stored(conn, "town", "2026-09")
            assert row is not None
            doc = json.loads(row["document"])
            assert verify_hash(doc)
            assert doc["parties"]["partner"]["vat_id"] == "DK55667788"
            assert doc["parties"]["counterparties"] == [
                {
                    "id": "plant",
                    "name": "Harbour Power Station A/S",
                    "address": "Havnevej 1, 4400 Kalundborg, Denmark",
                    "vat_id": "DK11223344",
                }
            ]
            assert doc["payment_terms"] == "Net 30 days from the statement date."
            (sub,) = doc["subtotals"]
            assert sub["counterparty"] == "plant" and sub["payable"] == doc["totals"]["payable"]
            text = " ".join(" ".join(pdf_text(bytes(row["pdf"]))).split())
            assert "2026-10-05 09:30 +02:00" in text
            assert "Harbour Power Station A/S" in text and "DK11223344" in text
        finally:
            await conn.close()

    asyncio.run(go())


async def _faulty_september(url: str, net: Network) -> asyncpg.Connection:
    """September with a counter reset on the sent meter and a day-long gap on the received
    one: alerts on the meters, none needed on the exchange."""
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    await apply_network(conn, net)
    faults = [
        parse_fault("reset:out@2026-09-10T12:00Z", net),
        parse_fault("gap:in@2026-09-14T22:00Z+1d", net),
    ]
    await write_simulation(asyncpg_dsn(url), net, SEPT, NOV, faults=faults, seed=3)
    await Engine(Settings(database_url=url)).process_pending(conn, now=NOV)
    return conn


async def _direct_count(conn: asyncpg.Connection, net: Network) -> int:
    start, end = month_bounds(2026, 9, net.tz)
    n: int = await conn.fetchval(
        """SELECT count(*) FROM alerts WHERE subject IN ('heat', 'out', 'in')
           AND started_at < $2 AND coalesce(resolved_at, 'infinity') > $1""",
        start,
        end,
    )
    return n


def test_month_alert_counts_read_the_meters_alerts(database_url: str) -> None:
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _faulty_september(database_url, net)
        try:
            meter_alerts = await conn.fetch(
                "SELECT rule, subject FROM alerts WHERE subject_kind = 'meter'"
            )
            assert {r["rule"] for r in meter_alerts} >= {"counter_reset", "meter_stale"}
            counts = await month_alert_counts(conn, net, 2026, 9)
            assert counts["heat"] == await _direct_count(conn, net) >= 2
            # nothing of September's alerts was firing in August
            assert await month_alert_counts(conn, net, 2026, 8) == {}
        finally:
            await conn.close()

    asyncio.run(go())


def test_issued_line_counts_the_meters_alerts(database_url: str) -> None:
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _faulty_september(database_url, net)
        try:
            # the faults leave the month short of data: issue it anyway, as an operator would
            await issue_month(
                conn, net, 2026, 9, ISSUE_SEPT, accept_incomplete="meter faults, checked"
            )
            doc = json.loads((await stored(conn, "town", "2026-09"))["document"])
            (line,) = doc["lines"]
            assert line["alerts"] == await _direct_count(conn, net) >= 2
        finally:
            await conn.close()

    asyncio.run(go())
