"""Serialized window histories, kept in memory until PostgreSQL says they changed.

A dashboard asks for the same month of windows again and again, and a month of hourly
windows is 720 rows: decoding and serializing them costs the API about 4 ms of CPU each time.
This cache keeps the response bytes per (exchange, from, to) and drops an exchange's entries
when the ``symbiont_exchange_windows`` notification names it (migration 0005: a trigger on
``exchange_windows`` sends it at the commit of every write, whoever writes).

Correctness rests on three rules:

* An entry remembers the exchange's *generation* from before its query started.  A
  notification that arrives while the query runs bumps the generation, so the result is
  never served (it may or may not include the change).
* Entries are only made and served while the live listener is connected.  Losing the
  connection (notifications may have been missed) empties the cache and bumps every
  generation.
* Concurrent misses for one key share one query.

Entries also expire after ``max_age_s``, and the cache holds at most ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

Key = tuple[str, datetime, datetime]


@dataclass
class _Entry:
    body: bytes
    generation: tuple[int, int]
    made: float


@dataclass
class WindowsCache:
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 300.0
    enabled: Callable[[], bool] = lambda: True
    hits: int = 0
    misses: int = 0
    _entries: OrderedDict[Key, _Entry] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _epoch: int = 0
    _generations: dict[str, int] = field(default_factory=dict)
    _inflight: dict[tuple[Key, tuple[int, int]], asyncio.Future[bytes]] = field(
        default_factory=dict
    )

    # -- invalidation ------------------------------------------------------------------------
    def changed(self, exchange_ids: Iterable[str] | None) -> None:
        """The windows of these exchanges changed (None: of any exchange)."""
        if exchange_ids is None:
            self.clear()
            return
        for ex_id in exchange_ids:
            self._generations[ex_id] = self._generations.get(ex_id, 0) + 1
            for key in [k for k in self._entries if k[0] == ex_id]:
                self._drop(key)

    def notified(self, payload: str) -> None:
        """A ``symbiont_exchange_windows`` payload: space-separated ids, or '*'."""
        ids = payload.split()
        self.changed(None if not ids or "*" in ids else ids)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._bytes = 0

    def _generation(self, exchange_id: str) -> tuple[int, int]:
        return (self._epoch, self._generations.get(exchange_id, 0))

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)

    # -- lookup ------------------------------------------------------------------------------
    async def get(self, key: Key, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """The response bytes for ``key``, from memory or from ``compute()``."""
        if not self.enabled():
            self.misses += 1
            return await compute()
        generation = self._generation(key[0])
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None:
            if entry.generation == generation and now - entry.made < self.max_age_s:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.body
            self._drop(key)
        self.misses += 1
        flight = (key, generation)
        pending = self._inflight.get(flight)
        if pending is not None:
            # Wait for the other request's query; if it was abandoned, query ourselves.
            await asyncio.wait({pending})
            return pending.result() if not pending.cancelled() else await compute()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            body = await compute()
        except BaseException:
            future.cancel()  # waiters run the query themselves
            raise
        finally:
            del self._inflight[flight]
        future.set_result(body)
        if self.enabled() and self._generation(key[0]) == generation:
            self._store(key, _Entry(body, generation, now))
        return body

    def _store(self, key: Key, entry: _Entry) -> None:
        if len(entry.body) > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = entry
        self._bytes += len(entry.body)
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes
