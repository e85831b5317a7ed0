"""``symbiont demo`` end to end: its first screen says what a person needs and nothing else,
dashboard and tokens answer, history reconciled and last month issued complete (what it
prints is what the statements hold), then Ctrl-C stops everything it started; started again,
it offers the same tokens while they are valid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from ingest_helpers import symbiont_command
from services import free_port

from cli.demo import prune_server_handles, read_tokens
from core.db import asyncpg_dsn


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(tmp_path: Path, env: dict[str, str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The demo as `make demo` runs it: its history starts with last month, whatever day of
    the month it is, so last month can be issued complete."""
    out = tmp_path / name
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*symbiont_command(), "demo"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return proc, out


ISSUED = re.compile(r"^(\w+) issued: (\d+) statements, coverage ([\d.]+) % on every line", re.M)


def _wait_caught_up(proc: subprocess.Popen[bytes], out: Path) -> re.Match[str]:
    """What the demo printed when it issued last month (or found it issued)."""
    deadline = time.monotonic() + 480
    found = None
    text = ""
    while time.monotonic() < deadline and found is None:
        assert proc.poll() is None, out.read_text()
        time.sleep(1)
        text = out.read_text()
        found = ISSUED.search(text)
    assert found is not None, text
    return found


def _last_month(now: datetime) -> tuple[str, str]:
    """Last month's label and name in the example network's zone."""
    local = now.astimezone(ZoneInfo("Europe/Copenhagen")).replace(day=1)
    last = (local - timedelta(days=1)).replace(day=1)
    return f"{last:%Y-%m}", f"{last:%B}"


def _issued_documents(database_url: str, month: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            rows = await conn.fetch(
                "SELECT document FROM statements WHERE month = $1 ORDER BY id", month
            )
            return [json.loads(r["document"]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


def _api_tokens(database_url: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            rows = await conn.fetch("SELECT id, role, partner_id, revoked_at FROM api_tokens")
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


def _revoke(database_url: str, token: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            token_id = int(token.split("_")[1])
            await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", token_id)
        finally:
            await conn.close()

    asyncio.run(go())


# What must never reach the first screen: log lines, migration chatter, Python warnings.
NOISE = re.compile(
    r"\b(DEBUG|INFO|WARNING|ERROR)\b|alembic|XDG_RUNTIME_DIR|Warning|Deprecat|Traceback", re.I
)


def _check_first_screen(text: str, port: int, database_url: str, tokens: dict[str, str]) -> None:
    """The dashboard, a token per role, the database and broker for the command line, and
    what is going to happen; nothing else."""
    screen = text.split("ready after", 1)[0]
    assert f"Dashboard  http://127.0.0.1:{port}/" in screen
    for who, token in tokens.items():
        assert re.search(rf"^ +{re.escape(who)} +{re.escape(token)}$", screen, re.M), who
    assert re.search(rf"^  Database +{re.escape(database_url)}", screen, re.M)
    assert re.search(r"^  Broker +mqtt://127\.0\.0\.1:\d+$", screen, re.M)  # its own
    assert re.search(r"export SYMBIONT_MQTT_URL='mqtt://127\.0\.0\.1:\d+'", screen)
    month, name = _last_month(datetime.now(UTC))
    assert "1. History: the readings since the start of " + name in screen
    assert "2. Live:" in screen
    assert re.search(rf"3\. Statements: {month} (is held until|was issued)", screen)
    assert "Meter novo-steam-in falls silent" in screen
    found = NOISE.search(text)
    assert found is None, f"noise on the demo's screen: {found.group(0)!r} in\n{text}"


def _wait_ready(proc: subprocess.Popen[bytes], out: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        text = out.read_text()
        if "ready after" in text:
            return text
        time.sleep(0.5)
    raise AssertionError(out.read_text())


def _rejections(database_url: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM rejections"))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_demo_runs_and_stops_cleanly(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SYMBIONT_DATABASE_URL": database_url,
        "SYMBIONT_API_PORT": str(port),
    }
    env.pop("SYMBIONT_MQTT_URL", None)  # the demo runs its own broker
    first_day = datetime.now(UTC).date()
    proc, out = _start(tmp_path, env, "demo.out")
    try:
        printed = _wait_caught_up(proc, out)
        text = out.read_text()
        tokens = read_tokens(tmp_path / ".demo" / "tokens.txt")
        partners = sorted(k for k in tokens if k.startswith("partner "))
        assert set(tokens) == {"operator", "admin", *partners} and len(partners) == 2
        _check_first_screen(text, port, database_url, tokens)
        # last month is issued complete, and the demo says what the statements hold
        month, name = _last_month(datetime.now(UTC))
        docs = _issued_documents(database_url, month)
        assert printed.group(1) == name and int(printed.group(2)) == len(docs) == 11
        lines = [ln for d in docs for ln in d["lines"]]
        lowest = min(Decimal(ln["coverage"]) for ln in lines)
        assert lowest >= Decimal("0.99")
        assert Decimal(printed.group(3)) == (lowest * 100).quantize(Decimal("0.1"), ROUND_DOWN)
        for doc in docs:
            assert doc["status"] == "issued" and doc["incomplete_reason"] is None
            assert doc["document_number"].startswith("kalundborg-")
            for ln in doc["lines"]:
                assert Decimal(ln["billed"]) > 0, (doc["partner"], ln)
                if ln["price"] and Decimal(ln["price"]) > 0:
                    assert Decimal(ln["amount"]) > 0, (doc["partner"], ln)
            assert Decimal(doc["totals"]["net_amount"]) != 0
        headers = {"Authorization": f"Bearer {tokens['operator']}"}
        live = httpx.get(f"http://127.0.0.1:{port}/api/v1/live", headers=headers).json()
        assert len(live["exchanges"]) == 16
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        partner = next(k for k in tokens if k.startswith("partner"))
        listing = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/partners/{partner.split()[1]}/statements",
            headers={"Authorization": f"Bearer {tokens[partner]}"},
        ).json()
        assert {i["month"]: i for i in listing["items"]}[month]["status"] == "issued"
        # nothing of last month comes back as an adjustment on this month's draft (data
        # still arriving after the issue could at most move the last per cent of it)
        draft = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/partners/{partner.split()[1]}/statements/"
            f"{datetime.now(UTC).astimezone(ZoneInfo('Europe/Copenhagen')):%Y-%m}",
            headers={"Authorization": f"Bearer {tokens[partner]}"},
        ).json()
        billed = sum(
            abs(Decimal(ln["amount"]))
            for d in docs
            if d["partner"] == draft["partner"]
            for ln in d["lines"]
        )
        adjusted = sum(abs(Decimal(a["delta_amount"])) for a in draft["adjustments"])
        assert adjusted <= billed / 100, draft["adjustments"]
        children = _children(proc.pid)
        assert len(children) >= 5  # broker, ingest, rules, api, simulator
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        time.sleep(1)
        left = [pid for pid in children if _alive(pid)]
        assert not left, f"still running after the demo stopped: {left}"
        assert "demo stopped" in out.read_text()
        assert _rejections(database_url) == 0
        # Started again on the same data, in a later minute, it publishes the same history
        # again: duplicates, which ingest drops silently, and no conflicting readings. It
        # offers the tokens of the first start that are still valid, and a new one in place
        # of the one revoked meanwhile.
        _revoke(database_url, tokens["operator"])
        time.sleep(61 - time.time() % 60)
        proc, out = _start(tmp_path, env, "demo-again.out")
        screen = _wait_ready(proc, out)
        again = read_tokens(tmp_path / ".demo" / "tokens.txt")
        _check_first_screen(screen, port, database_url, again)
        assert set(again) == set(tokens) and again["operator"] != tokens["operator"]
        assert {k: v for k, v in again.items() if k != "operator"} == {
            k: v for k, v in tokens.items() if k != "operator"
        }
        rows = _api_tokens(database_url)
        assert len(rows) == 5  # four from the first start, one new operator token
        assert sorted((r["role"], r["partner_id"]) for r in rows if r["revoked_at"] is None) == [
            ("admin", None),
            ("operator", None),
            *sorted(("partner", p.split()[1]) for p in partners),
        ]
        _wait_caught_up(proc, out)
        if datetime.now(UTC).date() == first_day:  # a new day starts the history a day later
            assert _rejections(database_url) == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:  # a failed check: stop it as Ctrl-C does, children and all
            kids = _children(proc.pid)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in kids:  # its services run in sessions of their own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_killed_demo_does_not_keep_the_embedded_server_running(tmp_path: Path) -> None:
    """pgserver stops its server when the last process on its list exits; a demo killed
    outright stayed on that list for ever, so the next demo is taken off it first."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    handles = tmp_path / ".handle_pids.json"
    handles.write_text(json.dumps([dead.pid, os.getpid()]))
    assert prune_server_handles(tmp_path) == [os.getpid()]
    assert json.loads(handles.read_text()) == [os.getpid()]
    handles.write_text("not json")
    assert prune_server_handles(tmp_path) == []
    assert handles.read_text() == "not json"  # what it cannot read it leaves alone


def test_ctrl_c_during_a_status_query_stops_the_demo_after_it() -> None:
    """Ctrl-C while the demo's loop runs one of its database queries (``asyncio.run``) is
    noted and stops the demo at the next pause; left to asyncio it became a cancellation that
    the database driver's cleanup could swallow, and the demo ran on (seen under load)."""
    from cli import demo

    async def query() -> str:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.1)  # the signal arrives while the query runs
        return "answered"

    previous = signal.signal(signal.SIGINT, demo._terminate)
    try:
        assert asyncio.run(query()) == "answered"  # the query is not cut short
        with pytest.raises(KeyboardInterrupt):
            demo._pause(5)  # … but the demo stops at once
        demo._stopping.clear()
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):  # outside a query Ctrl-C stops it at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert time.monotonic() - began < 4
    finally:
        signal.signal(signal.SIGINT, previous)
        demo._stopping.clear()
