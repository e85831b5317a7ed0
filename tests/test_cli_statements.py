"""The statements commands: `issue` refuses a month whose data is incomplete, naming the lines
short of data, and issues it with `--accept-incomplete --reason`, which the statement then
prints (JSON, CSV, PDF); `revise` issues revision 2 once the data has arrived."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pandas as pd
from ingest_helpers import symbiont_command
from pypdf import PdfReader

from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import load_network
from core.settings import Settings
from rules.engine import Engine

REPO = Path(__file__).resolve().parent.parent
SMALL = REPO / "examples" / "small.yaml"
SEPT = datetime(2026, 8, 31, 22, tzinfo=UTC)  # 1 September, Copenhagen
OCT = datetime(2026, 9, 30, 22, tzinfo=UTC)
GAP = datetime(2026, 9, 10, 22, tzinfo=UTC)  # the town's heat meter is silent 11-20 September
REASON = "town heat meter offline 11-20 September; billed on the data at hand"


def symbiont(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    environment["SYMBIONT_DATABASE_URL"] = database_url
    return subprocess.run(
        [*symbiont_command(), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _simulate(database_url: str, *, gap: bool) -> None:
    net = load_network(SMALL)

    async def go() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, net)
            if gap:
                fault = parse_fault(f"gap:town-heat-in@{GAP.isoformat()}+10d", net)
                await write_simulation(
                    asyncpg_dsn(database_url), net, SEPT, OCT, faults=[fault], seed=3
                )
            else:  # the ten missing days
                end = GAP + timedelta(days=10)
                await write_simulation(asyncpg_dsn(database_url), net, GAP, end, seed=3)
            await Engine(Settings(database_url=database_url)).process_pending(conn, now=OCT)
        finally:
            await conn.close()

    asyncio.run(go())


def test_issue_refuses_incomplete_data_unless_accepted_with_a_reason(
    database_url: str, tmp_path: Path
) -> None:
    _simulate(database_url, gap=True)

    refused = symbiont(database_url, "statements", "issue", "2026-09")
    assert refused.returncode == 1, refused.stderr
    # the plant's gypsum line is complete, its heat line is not: nobody with a heat line is
    # issued, the boards factory (gypsum only) is
    assert "boards 2026-09: issued, document small-" in refused.stdout
    for partner in ("plant", "town"):
        assert f"{partner} 2026-09: held, data incomplete: heat-plant-town (" in refused.stdout
    assert "coverage 6" in refused.stdout  # about 20 of 30 days
    assert "2 statements of 2026-09 not issued, data incomplete" in refused.stderr
    assert "--accept-incomplete --reason TEXT" in refused.stderr

    no_reason = symbiont(database_url, "statements", "issue", "2026-09", "--accept-incomplete")
    assert no_reason.returncode == 1 and "needs --reason" in no_reason.stderr
    no_flag = symbiont(database_url, "statements", "issue", "2026-09", "--reason", "x")
    assert no_flag.returncode == 1 and "goes with --accept-incomplete" in no_flag.stderr

    accepted = symbiont(
        database_url, "statements", "issue", "2026-09", "--accept-incomplete", "--reason", REASON
    )
    assert accepted.returncode == 0, accepted.stderr
    lines = accepted.stdout.splitlines()
    assert any(ln.startswith("boards 2026-09: already issued") for ln in lines)
    for partner in ("plant", "town"):
        (at,) = [i for i, ln in enumerate(lines) if ln.startswith(f"{partner} 2026-09: issued")]
        assert lines[at + 1] == f"  issued with incomplete data: {REASON}"

    shown = symbiont(database_url, "statements", "show", "town", "2026-09")
    doc = json.loads(shown.stdout)
    assert doc["status"] == "issued" and doc["incomplete_reason"] == REASON
    assert doc["document_number"].startswith(f"small-{datetime.now(UTC).year}-")
    csv = symbiont(database_url, "statements", "show", "town", "2026-09", "--format", "csv")
    frame = pd.read_csv(io.StringIO(csv.stdout), dtype=str)
    assert list(frame[frame["record"] == "incomplete"]["reason"]) == [REASON]
    pdf = tmp_path / "town.pdf"
    made = symbiont(
        database_url, "statements", "show", "town", "2026-09", "--format", "pdf", "-o", str(pdf)
    )
    assert made.returncode == 0, made.stderr
    text = PdfReader(pdf).pages[0].extract_text()
    assert "Issued with incomplete data" in text and "offline 11-20 September" in text
    complete = json.loads(symbiont(database_url, "statements", "show", "boards", "2026-09").stdout)
    assert complete["incomplete_reason"] is None

    # revising before the data arrived: refused, it is still incomplete
    early = symbiont(database_url, "statements", "revise", "town", "2026-09", "--reason", "x")
    assert early.returncode == 1 and "data incomplete" in early.stdout
    _simulate(database_url, gap=False)
    revised = symbiont(
        database_url, "statements", "revise", "town", "2026-09", "--reason", "the data arrived"
    )
    assert revised.returncode == 0, revised.stderr
    assert "town 2026-09: issued (revision 2), document small-" in revised.stdout
    assert "reason: the data arrived" in revised.stdout
    latest = json.loads(symbiont(database_url, "statements", "show", "town", "2026-09").stdout)
    assert latest["revision"] == 2 and latest["previous_hash"] == doc["content_hash"]
    assert latest["incomplete_reason"] is None
    first = symbiont(database_url, "statements", "show", "town", "2026-09", "--revision", "1")
    assert json.loads(first.stdout)["content_hash"] == doc["content_hash"]
    missing = symbiont(database_url, "statements", "show", "town", "2026-09", "--revision", "5")
    assert missing.returncode == 1 and "no revision 5" in missing.stderr
    twice = symbiont(database_url, "statements", "revise", "town", "2026-09", "--reason", "again")
    assert twice.returncode == 1 and "nothing to revise" in twice.stderr
    no_reason = symbiont(database_url, "statements", "revise", "town", "2026-09")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
