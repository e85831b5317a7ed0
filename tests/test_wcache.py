"""api.wcache: what the window-history cache may serve, in isolation (the notifications that
drive it are tested against PostgreSQL in test_api.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from api.wcache import WindowsCache

T0 = datetime(2026, 10, 1, tzinfo=UTC)
KEY = ("steam", T0, T0 + timedelta(days=30))
OTHER = ("water", T0, T0 + timedelta(days=30))


class Source:
    """A stand-in for the database query: counts calls, can be held mid-query."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = b"v0"
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> bytes:
        self.calls += 1
        value = self.value
        if self.gate is not None:
            await self.gate.wait()
        return value


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_serves_from_memory_until_the_exchange_changes() -> None:
    async def go() -> None:
        cache, src = WindowsCache(), Source()
        assert await cache.get(KEY, src) == b"v0"
        assert await cache.get(KEY, src) == b"v0"
        assert src.calls == 1 and cache.hits == 1
        src.value = b"v1"
        cache.notified("water")  # another exchange: still valid
        assert await cache.get(KEY, src) == b"v0"
        cache.notified("gypsum steam")
        assert await cache.get(KEY, src) == b"v1" and src.calls == 2
        src.value = b"v2"
        cache.notified("*")
        assert await cache.get(KEY, src) == b"v2"

    run(go())


def test_a_change_during_the_query_is_never_cached() -> None:
    async def go() -> None:
        cache, src = WindowsCache(), Source()
        src.gate = asyncio.Event()
        first = asyncio.create_task(cache.get(KEY, src))
        await asyncio.sleep(0)
        cache.notified("steam")  # committed while the query ran: it may have missed it
        src.value = b"v1"
        src.gate.set()
        assert await first == b"v0"
        src.gate = None
        assert await cache.get(KEY, src) == b"v1"
        assert src.calls == 2

    run(go())


def test_concurrent_misses_share_one_query_and_survive_its_cancellation() -> None:
    async def go() -> None:
        cache, src = WindowsCache(), Source()
        src.gate = asyncio.Event()
        tasks = [asyncio.create_task(cache.get(KEY, src)) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert src.calls == 1
        src.gate.set()
        assert await asyncio.gather(*tasks) == [b"v0"] * 5
        # The request that runs the query goes away (client disconnect): the others query.
        cache.notified("steam")
        src.gate = asyncio.Event()
        leader = asyncio.create_task(cache.get(KEY, src))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(cache.get(KEY, src))
        await asyncio.sleep(0.01)
        leader.cancel()
        await asyncio.sleep(0.01)
        src.gate.set()
        assert await follower == b"v0"
        with pytest.raises(asyncio.CancelledError):
            await leader

    run(go())


def test_nothing_is_cached_while_notifications_cannot_arrive() -> None:
    async def go() -> None:
        connected = False
        cache, src = WindowsCache(enabled=lambda: connected), Source()
        await cache.get(KEY, src)
        await cache.get(KEY, src)
        assert src.calls == 2 and cache.size == 0
        connected = True
        await cache.get(KEY, src)
        await cache.get(KEY, src)
        assert src.calls == 3

    run(go())


def test_memory_is_bounded_oldest_first() -> None:
    async def go() -> None:
        cache = WindowsCache(max_bytes=250)

        async def hundred() -> bytes:
            return b"x" * 100

        await cache.get(KEY, hundred)
        await cache.get(OTHER, hundred)
        await cache.get(("ash", T0, T0), hundred)
        assert cache.size == 2 and cache.bytes == 200
        hits = cache.hits
        await cache.get(OTHER, hundred)
        assert cache.hits == hits + 1
        await cache.get(KEY, hundred)  # evicted: queried again
        assert cache.hits == hits + 1

    run(go())


def test_query_errors_propagate_and_are_not_cached() -> None:
    async def go() -> None:
        cache = WindowsCache()

        async def broken() -> bytes:
            raise RuntimeError("database went away")

        with pytest.raises(RuntimeError, match="went away"):
            await cache.get(KEY, broken)
        assert cache.size == 0

    run(go())


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("api_windows_cache_mb", -1, "greater than or equal to 0"),
        ("ingest_queue_messages", 70000, "less than or equal to 65535"),
        ("ingest_queue_messages", 10, "greater than or equal to 100"),
        ("ingest_pipeline", 0, "greater than or equal to 1"),
    ],
)
def test_the_new_settings_refuse_bad_values_by_name(field: str, value: int, problem: str) -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError) as err:
        Settings(**{field: value})
    assert field in str(err.value) and problem in str(err.value)
