"""``symbiont network apply``: load a validated network into the database, idempotently.

Everything happens in one transaction. What the file no longer names is retired (its
``retired_at`` set), never deleted, so its readings and history stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import orjson

from core.network import Network


@dataclass
class ApplyReport:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    unchanged: bool = False

    def summary(self) -> str:
        if self.unchanged:
            return "no changes"
        parts = []
        for label, counts in (
            ("created", self.created),
            ("updated", self.updated),
            ("retired", self.retired),
        ):
            items = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
            if items:
                parts.append(f"{label} {items}")
        return "; ".join(parts) or "no changes"


def network_document(net: Network) -> dict[str, object]:
    doc: dict[str, object] = net.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    return doc


async def apply_network(conn: asyncpg.Connection, net: Network) -> ApplyReport:
    report = ApplyReport()
    document = orjson.dumps(network_document(net)).decode()
    windows = net.meter_windows()
    async with conn.transaction():
        await conn.execute("LOCK TABLE network IN EXCLUSIVE MODE")
        old = await conn.fetchrow("SELECT id, document::text AS doc FROM network LIMIT 1")
        if old is not None and old["id"] != net.network:
            raise ValueError(f"this database holds network '{old['id']}', not '{net.network}'")
        if old is not None and orjson.loads(old["doc"]) == orjson.loads(document):
            report.unchanged = True
            return report

        async def upsert(
            kind: str, sql: str, rows: list[tuple[object, ...]], ids: list[str], table: str
        ) -> None:
            existing = {r["id"] for r in await conn.fetch(f"SELECT id FROM {table}")}
            report.created[kind] = len(set(ids) - existing)
            report.updated[kind] = len(set(ids) & existing)
            if rows:
                await conn.executemany(sql, rows)
            retired = await conn.execute(
                f"UPDATE {table} SET retired_at = now() "
                "WHERE retired_at IS NULL AND NOT (id = ANY($1::text[]))",
                ids,
            )
            report.retired[kind] = int(retired.rsplit(" ", 1)[1])

        await upsert(
            "partners",
            """INSERT INTO partners (id, name, email, webhook) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO UPDATE SET name = $2, email = $3, webhook = $4,
               retired_at = NULL, updated_at = now()""",
            [(p.id, p.name, p.email, p.webhook) for p in net.partners],
            [p.id for p in net.partners],
            "partners",
        )
        await upsert(
            "meters",
            """INSERT INTO meters (id, partner_id, kind, medium, reading, unit, uncertainty,
                                   uncertainty_abs, interval_s, window_s, rules)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
               ON CONFLICT (id) DO UPDATE SET partner_id = $2, kind = $3, medium = $4,
               reading = $5, unit = $6, uncertainty = $7, uncertainty_abs = $8,
               interval_s = $9, window_s = $10, rules = $11::jsonb, retired_at = NULL,
               updated_at = now()""",
            [
                (
                    m.id,
                    m.partner,
                    m.kind.value,
                    m.medium,
                    m.reading.value,
                    m.unit,
                    m.uncertainty,
                    m.uncertainty_abs,
                    m.interval,
                    int(windows[m.id].total_seconds()),
                    orjson.dumps(net.meter_rules.get(m.id, {})).decode(),
                )
                for m in net.meters
            ],
            [m.id for m in net.meters],
            "meters",
        )
        await upsert(
            "exchanges",
            """INSERT INTO exchanges (id, provider_id, receiver_id, kind, loss, window_s,
                                      billing, rules)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
               ON CONFLICT (id) DO UPDATE SET provider_id = $2, receiver_id = $3, kind = $4,
               loss = $5, window_s = $6, billing = $7, rules = $8::jsonb, retired_at = NULL,
               updated_at = now()""",
            [
                (
                    e.id,
                    e.provider,
                    e.receiver,
                    e.kind.value,
                    e.loss,
                    int(e.window.total_seconds()),
                    e.billing.value,
                    orjson.dumps(e.rules).decode(),
                )
                for e in net.exchanges
            ],
            [e.id for e in net.exchanges],
            "exchanges",
        )
        await upsert(
            "balances",
            """INSERT INTO balances (id, kind, loss, window_s) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO UPDATE SET kind = $2, loss = $3, window_s = $4,
               retired_at = NULL, updated_at = now()""",
            [(b.id, b.kind.value, b.loss, int(b.window.total_seconds())) for b in net.balances],
            [b.id for b in net.balances],
            "balances",
        )
        await conn.execute("DELETE FROM exchange_meters")
        await conn.executemany(
            "INSERT INTO exchange_meters (exchange_id, meter_id, side) VALUES ($1, $2, $3)",
            [(e.id, m, "sent") for e in net.exchanges for m in e.sent]
            + [(e.id, m, "received") for e in net.exchanges for m in e.received],
        )
        await conn.execute("DELETE FROM balance_meters")
        await conn.executemany(
            "INSERT INTO balance_meters (balance_id, meter_id, side) VALUES ($1, $2, $3)",
            [(b.id, m, "in") for b in net.balances for m in b.in_]
            + [(b.id, m, "out") for b in net.balances for m in b.out],
        )
        await conn.execute("DELETE FROM terms")
        await conn.executemany(
            """INSERT INTO terms (exchange_id, valid_from, price, receiver_avoided_cost,
               receiver_avoided_co2, provider_avoided_cost, provider_avoided_co2)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            [
                (
                    e.id,
                    t.from_,
                    t.price,
                    t.receiver_avoided_cost,
                    t.receiver_avoided_co2,
                    t.provider_avoided_cost,
                    t.provider_avoided_co2,
                )
                for e in net.exchanges
                for t in e.terms
            ],
        )
        await conn.execute(
            """INSERT INTO network (id, name, timezone, currency, document, applied_at)
               VALUES ($1, $2, $3, $4, $5::jsonb, clock_timestamp())
               ON CONFLICT (id) DO UPDATE SET name = $2, timezone = $3, currency = $4,
               document = $5::jsonb, applied_at = clock_timestamp()""",
            net.network,
            net.name,
            net.timezone,
            net.currency,
            document,
        )
    return report


async def load_applied(conn: asyncpg.Connection) -> Network | None:
    from core.network import parse_network

    doc = await conn.fetchval("SELECT document FROM network LIMIT 1")
    if doc is None:
        return None
    return parse_network(orjson.loads(doc))
