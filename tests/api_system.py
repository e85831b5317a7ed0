"""A running API over a database with a simulated past: for the API and dashboard tests.

``ApiSystem`` applies the example network to a migrated database, backfills recent days
with a leak on one exchange, runs the rules engine once, makes a token for every role (and
for two partners) and serves ``create_app()`` with uvicorn on a free port in a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from services import free_port

from api.app import create_app
from api.tokens import create_token
from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, load_network
from core.settings import Settings
from rules.engine import Engine

REPO = Path(__file__).resolve().parent.parent
LEAKING = "steam-asnaes-novo"  # loses 25 % of its steam from the start of the backfill
OWN = "novo"  # the partner of the partner token used as "own" (receiver of LEAKING)
FOREIGN = "gyproc"  # a partner that has nothing to do with LEAKING


@dataclass
class ApiSystem:
    database_url: str
    network: Network
    start: datetime
    end: datetime
    tokens: dict[str, str] = field(default_factory=dict)  # role or "partner:<id>" → token
    port: int = 0
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    # -- building ----------------------------------------------------------------------------
    def prepare(self, days: float = 2.0, leak: str = "25%") -> None:
        asyncio.run(self._prepare(days, leak))

    async def _prepare(self, days: float, leak: str) -> None:
        dsn = asyncpg_dsn(self.database_url)
        conn = await asyncpg.connect(dsn)
        try:
            await apply_network(conn, self.network)
            fault = parse_fault(f"leak:{LEAKING}:{leak}@{self.start.isoformat()}", self.network)
            await write_simulation(dsn, self.network, self.start, self.end, faults=[fault], seed=5)
            await Engine(Settings(database_url=self.database_url)).process_pending(
                conn, now=self.end
            )
            for role in ("admin", "operator", "integration"):
                self.tokens[role] = (await create_token(conn, role, name=f"test {role}")).token
            for partner in (OWN, FOREIGN):
                created = await create_token(conn, "partner", partner, name=f"test {partner}")
                self.tokens[f"partner:{partner}"] = created.token
        finally:
            await conn.close()

    # -- serving -----------------------------------------------------------------------------
    def serve(self, **overrides: object) -> None:
        settings = Settings(database_url=self.database_url, **overrides)  # type: ignore[arg-type]
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=15)


def build(database_url: str, days: float = 2.0) -> ApiSystem:
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    system = ApiSystem(database_url, net, end - timedelta(days=days), end)
    system.prepare(days)
    return system


def db_fetch(system: ApiSystem, sql: str, *args: Any) -> list[asyncpg.Record]:
    """``sql`` run on the system's database, outside the API (what a test checks it against)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(system.database_url))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())
