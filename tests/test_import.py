"""``symbiont import CSV`` against a real database, through the real command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from core.db import asyncpg_dsn

NETWORK = """\
network: csvpark
name: CSV park
timezone: Europe/Copenhagen
partners:
  - {id: plant, name: Plant}
  - {id: town, name: Town}
meters:
  - {id: heat-out, partner: plant, kind: heat, reading: total, unit: GJ, uncertainty: 0.02,
     interval: 60}
  - {id: heat-in, partner: town, kind: heat, reading: total, unit: MWh, uncertainty: 0.02,
     interval: 60}
exchanges:
  - {id: heat, provider: plant, receiver: town, kind: heat, sent: [heat-out],
     received: [heat-in], loss: 0.05}
"""


def symbiont(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYMBIONT_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _rows(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql)
        return rows
    finally:
        await conn.close()


def test_import_csv_stores_converts_and_rejects(database_url: str, tmp_path: Path) -> None:
    net = tmp_path / "net.yaml"
    net.write_text(NETWORK)
    assert symbiont(database_url, "network", "apply", str(net)).returncode == 0
    lines = ["meter,ts,value,unit"]
    lines += [f"heat-out,2026-11-01T00:{m:02d}:00Z,{360 + m * 3.6},GJ" for m in range(60)]
    lines += [f"heat-in,{1793491200 + 60 * m},{100 + m * 0.95}," for m in range(60)]
    lines += [
        "heat-out,2026-11-01T00:00:00Z,360,GJ",  # duplicate of line 2
        "heat-out,2026-11-01T00:01:00Z,1,MWh",  # conflict
        "ghost,2026-11-01T00:00:00Z,1,",  # unknown meter
        "heat-in,2026-11-01T02:00:00Z,abc,",  # not a number
        "heat-in,2026-11-01T02:00:00Z,5,m3",  # unit of the wrong kind
        "heat-in,not-a-time,5,",
    ]
    csv = tmp_path / "export.csv"
    csv.write_text("\n".join(lines) + "\n")
    done = symbiont(database_url, "import", str(csv))
    assert done.returncode == 1, done.stderr  # some rows were rejected
    assert "126 rows: 120 readings stored, 1 duplicates, 5 rejected" in " ".join(
        done.stderr.split()
    )
    rows = asyncio.run(
        _rows(
            database_url,
            "SELECT meter_id, count(*), min(value) FROM readings GROUP BY 1 ORDER BY 1",
        )
    )
    assert [(r[0], r[1]) for r in rows] == [("heat-in", 60), ("heat-out", 60)]
    assert abs(rows[1][2] - 100.0) < 1e-9  # 360 GJ = 100 MWh
    reasons = asyncio.run(
        _rows(database_url, "SELECT reason, topic, detail FROM rejections ORDER BY id")
    )
    assert sorted(r["reason"] for r in reasons) == [
        "bad_timestamp",
        "bad_unit",
        "conflict",
        "not_finite",
        "unknown_meter",
    ]
    assert all(r["topic"] == "import:export.csv" for r in reasons)
    assert any(r["detail"].startswith("line 124: unknown meter 'ghost'") for r in reasons)


def test_import_refuses_a_csv_without_the_columns(database_url: str, tmp_path: Path) -> None:
    net = tmp_path / "net.yaml"
    net.write_text(NETWORK)
    symbiont(database_url, "network", "apply", str(net))
    csv = tmp_path / "bad.csv"
    csv.write_text("when,how much\n2026-11-01T00:00:00Z,1\n")
    done = symbiont(database_url, "import", str(csv))
    assert done.returncode == 1
    assert "missing column(s) meter, ts, value" in done.stderr
    missing = symbiont(database_url, "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
