"""``symbiont network apply``: load a validated network into the database, idempotently.

Everything happens in one transaction, set-wise: the file's rows are copied into temporary
tables and merged, so that a network of 150,000 meters applies in seconds and only what
changed is written. What the file no longer names is retired (its ``retired_at`` set), never
deleted, so its readings and history stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from core.network import Network

# The sections of the file whose items the summary counts, by id.
SECTIONS = ("partners", "meters", "exchanges", "balances")


@dataclass
class ApplyReport:
    """What an apply changed, per section: items the file adds, items whose entry changed
    (a meter's also when its ``meter_rules`` changed) and items it no longer names."""

    added: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    unchanged: bool = False

    def summary(self) -> str:
        if self.unchanged:
            return "no changes"
        parts = []
        for label, counts in (
            ("added", self.added),
            ("changed", self.changed),
            ("removed", self.removed),
        ):
            items = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
            if items:
                parts.append(f"{label} {items}")
        # Only the network's own settings (name, time zone, currency, statements) changed.
        return "; ".join(parts) or "changed the network's settings"


def network_json(net: Network) -> str:
    """The document stored with the applied network: every field, defaults included, as
    JSON text (serialised by pydantic without building the dict first)."""
    return net.model_dump_json(by_alias=True)


# The table of each section, its columns (``id`` first) as the file gives them; the rows are
# copied into a temporary table of the same shape, then merged set-wise.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "partners": ("id", "name", "email", "webhook"),
    "meters": (
        "id",
        "partner_id",
        "kind",
        "medium",
        "reading",
        "unit",
        "uncertainty",
        "uncertainty_abs",
        "interval_s",
        "window_s",
        "rules",
    ),
    "exchanges": (
        "id",
        "provider_id",
        "receiver_id",
        "kind",
        "loss",
        "window_s",
        "billing",
        "rules",
    ),
    "balances": ("id", "kind", "loss", "window_s"),
}
_LINKS: dict[str, tuple[str, ...]] = {
    "exchange_meters": ("exchange_id", "meter_id", "side"),
    "balance_meters": ("balance_id", "meter_id", "side"),
    "terms": (
        "exchange_id",
        "valid_from",
        "price",
        "receiver_avoided_cost",
        "receiver_avoided_co2",
        "provider_avoided_cost",
        "provider_avoided_co2",
    ),
}

# Items added, removed and changed between the applied document and the new one (in the
# temporary table ``symbiont_new_network``), per section, compared as JSON; a meter's rule
# settings (``meter_rules``) count as part of it. Each document is read once (``docs``):
# naming the column per item would read all of it (tens of MB) again for every item.
_DIFF = """
WITH docs AS MATERIALIZED (
    SELECT 'old' AS side, document->$1 AS items, document->'meter_rules' AS rules FROM network
    UNION ALL
    SELECT 'new', document->$1, document->'meter_rules' FROM symbiont_new_network
), items AS (
    SELECT d.side, e->>'id' AS id,
           CASE WHEN $1 = 'meters' THEN e || jsonb_build_object('meter_rules', d.rules->(e->>'id'))
                ELSE e END AS item
    FROM docs d, jsonb_array_elements(d.items) e
), old AS (
    SELECT id, item FROM items WHERE side = 'old'
), new AS (
    SELECT id, item FROM items WHERE side = 'new'
)
SELECT count(*) FILTER (WHERE old.id IS NULL) AS added,
       count(*) FILTER (WHERE new.id IS NULL) AS removed,
       count(*) FILTER (WHERE old.item <> new.item) AS changed
FROM old FULL JOIN new USING (id)
"""


async def _stage(
    conn: asyncpg.Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> str:
    """``rows`` copied into a new temporary table shaped like ``table``; its name."""
    staged = f"symbiont_new_{table}"
    await conn.execute(
        f"CREATE TEMPORARY TABLE {staged} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    if rows:
        await conn.copy_records_to_table(staged, records=rows, columns=list(columns))
    await conn.execute(f"ANALYZE {staged}")
    return staged


async def _merge(conn: asyncpg.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Make ``table`` hold ``rows``: new ids inserted, changed rows updated (and a retired
    one brought back), unchanged rows left alone, ids no longer given retired."""
    columns = _COLUMNS[table]
    staged = await _stage(conn, table, columns, rows)
    names = ", ".join(columns)
    values = columns[1:]
    await conn.execute(
        f"""INSERT INTO {table} ({names}) SELECT {names} FROM {staged}
            ON CONFLICT (id) DO UPDATE SET
            {", ".join(f"{c} = EXCLUDED.{c}" for c in values)}, retired_at = NULL,
            updated_at = now()
            WHERE {table}.retired_at IS NOT NULL
               OR ({", ".join(f"{table}.{c}" for c in values)})
                  IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in values)})"""
    )
    await conn.execute(
        f"""UPDATE {table} t SET retired_at = now()
            WHERE t.retired_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM {staged} s WHERE s.id = t.id)"""
    )


async def _replace(conn: asyncpg.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Make ``table`` (of links or terms) hold exactly ``rows``: what differs deleted, what
    is missing inserted, the rest left alone."""
    columns = _LINKS[table]
    staged = await _stage(conn, table, columns, rows)
    same = " AND ".join(f"s.{c} = t.{c}" for c in columns)
    await conn.execute(
        f"DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM {staged} s WHERE {same})"
    )
    names = ", ".join(columns)
    await conn.execute(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {staged} ON CONFLICT DO NOTHING"
    )


async def apply_network(conn: asyncpg.Connection, net: Network) -> ApplyReport:
    """Apply ``net`` in one transaction. The same document again changes nothing (not even
    the time it was applied at, so the services do not reload it); otherwise every table is
    merged set-wise (see ``_merge``), and the report counts the items that changed."""
    report = ApplyReport()
    async with conn.transaction():
        await conn.execute("LOCK TABLE network IN EXCLUSIVE MODE")
        await conn.execute(
            "CREATE TEMPORARY TABLE symbiont_new_network (document jsonb NOT NULL) ON COMMIT DROP"
        )
        await conn.execute("INSERT INTO symbiont_new_network VALUES ($1::jsonb)", network_json(net))
        old = await conn.fetchrow(
            "SELECT n.id, n.document = s.document AS same "
            "FROM network n, symbiont_new_network s LIMIT 1"
        )
        if old is not None and old["id"] != net.network:
            raise ValueError(f"this database holds network '{old['id']}', not '{net.network}'")
        if old is not None and old["same"]:
            report.unchanged = True
            return report
        for section in SECTIONS:
            diff = await conn.fetchrow(_DIFF, section)
            report.added[section] = diff["added"]
            report.changed[section] = diff["changed"]
            report.removed[section] = diff["removed"]

        windows = net.meter_windows()
        await _merge(conn, "partners", [(p.id, p.name, p.email, p.webhook) for p in net.partners])
        no_rules: dict[str, Any] = {}
        await _merge(
            conn,
            "meters",
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
                    orjson.dumps(net.meter_rules.get(m.id, no_rules)).decode(),
                )
                for m in net.meters
            ],
        )
        await _merge(
            conn,
            "exchanges",
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
        )
        await _merge(
            conn,
            "balances",
            [(b.id, b.kind.value, b.loss, int(b.window.total_seconds())) for b in net.balances],
        )
        await _replace(
            conn,
            "exchange_meters",
            [(e.id, m, "sent") for e in net.exchanges for m in e.sent]
            + [(e.id, m, "received") for e in net.exchanges for m in e.received],
        )
        await _replace(
            conn,
            "balance_meters",
            [(b.id, m, "in") for b in net.balances for m in b.in_]
            + [(b.id, m, "out") for b in net.balances for m in b.out],
        )
        await _replace(
            conn,
            "terms",
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
               SELECT $1, $2, $3, $4, document, clock_timestamp() FROM symbiont_new_network
               ON CONFLICT (id) DO UPDATE SET name = $2, timezone = $3, currency = $4,
               document = EXCLUDED.document, applied_at = clock_timestamp()""",
            net.network,
            net.name,
            net.timezone,
            net.currency,
        )
    return report


async def load_applied(conn: asyncpg.Connection) -> Network | None:
    from core.network import parse_network
    from core.yamlload import paused_gc

    doc = await conn.fetchval("SELECT document FROM network LIMIT 1")
    if doc is None:
        return None
    with paused_gc():
        data = orjson.loads(doc)
    del doc
    return parse_network(data)
