"""What one API process holds: settings, the database pool, the network, the live hub."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from api.scope import Scope, scope_for
from api.tokens import Principal, Role
from core.apply import load_applied
from core.network import Network
from core.settings import Settings

if TYPE_CHECKING:
    from api.live import LiveHub
    from ingest.parse import Parser
    from ingest.writer import BatchWriter


class NoNetwork(RuntimeError):
    """No network file has been applied to this database yet."""


@dataclass
class NetworkCache:
    """The applied network. When a NOTIFY says the network table changed (or every
    ``ttl_s``) it asks the database when the network was applied, and loads it again only
    when that changed: loading a network of 150,000 meters takes seconds."""

    ttl_s: float = 30.0
    network: Network | None = None
    version: datetime | None = None  # the applied_at of the network held
    loaded_at: float = 0.0
    stale: bool = True
    loads: int = 0  # how many times it loaded the network
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _scopes: dict[str | None, Scope] = field(default_factory=dict)
    _scopes_of: Network | None = None

    def invalidate(self) -> None:
        self.stale = True

    def scope(self, net: Network, principal: Principal) -> Scope:
        """What ``principal`` may see of ``net``, worked out once per partner and network
        (every role but partner sees everything)."""
        if self._scopes_of is not net:
            self._scopes.clear()
            self._scopes_of = net
        key = principal.partner if principal.role is Role.partner else None
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = scope_for(net, principal)
        return scope

    def _due(self) -> bool:
        return self.network is None or self.stale or time.monotonic() - self.loaded_at > self.ttl_s

    async def get(self, pool: asyncpg.Pool) -> Network:
        if self._due():
            async with self.lock:
                if self._due():
                    self.stale = False
                    async with pool.acquire() as conn:
                        version = await conn.fetchval("SELECT applied_at FROM network LIMIT 1")
                        if version is None:
                            self.network = None
                        elif self.network is None or version != self.version:
                            self.network = await load_applied(conn)
                            self.loads += 1
                        self.version = version
                    self.loaded_at = time.monotonic()
        if self.network is None:
            raise NoNetwork("no network applied yet: run `symbiont network apply FILE`")
        return self.network


@dataclass
class TokenCache:
    """Verified tokens for a few seconds, so a busy client costs no query per request.

    A revoked token stops working within ``ttl_s``.
    """

    ttl_s: float = 5.0
    entries: dict[str, tuple[float, Principal]] = field(default_factory=dict)

    def get(self, token: str) -> Principal | None:
        hit = self.entries.get(token)
        if hit is None or time.monotonic() - hit[0] > self.ttl_s:
            return None
        return hit[1]

    def put(self, token: str, principal: Principal) -> None:
        if len(self.entries) > 10_000:
            self.entries.clear()
        self.entries[token] = (time.monotonic(), principal)


@dataclass
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    network: NetworkCache
    tokens: TokenCache
    hub: LiveHub
    writer: BatchWriter
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ingest_parser: tuple[Network, Parser] | None = None
    started: float = field(default_factory=time.monotonic)
