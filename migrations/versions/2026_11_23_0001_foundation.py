"""foundation: network, readings (partitioned by month), rejections, dirty windows

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

from core.db import split_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE network (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    timezone    text NOT NULL,
    currency    char(3) NOT NULL,
    document    jsonb NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE partners (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    webhook     text,
    retired_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE meters (
    id              text PRIMARY KEY,
    partner_id      text NOT NULL REFERENCES partners (id),
    kind            text NOT NULL CHECK (kind IN ('heat', 'water', 'material')),
    medium          text,
    reading         text NOT NULL CHECK (reading IN ('total', 'rate', 'delta')),
    unit            text NOT NULL,
    uncertainty     double precision NOT NULL CHECK (uncertainty >= 0),
    uncertainty_abs double precision NOT NULL DEFAULT 0 CHECK (uncertainty_abs >= 0),
    interval_s      double precision CHECK (interval_s > 0),
    window_s        integer NOT NULL CHECK (window_s > 0),
    rules           jsonb NOT NULL DEFAULT '{}',
    retired_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meters_partner ON meters (partner_id);

CREATE TABLE exchanges (
    id          text PRIMARY KEY,
    provider_id text NOT NULL REFERENCES partners (id),
    receiver_id text NOT NULL REFERENCES partners (id),
    kind        text NOT NULL CHECK (kind IN ('heat', 'water', 'material')),
    loss        double precision NOT NULL CHECK (loss >= 0 AND loss < 1),
    window_s    integer NOT NULL CHECK (window_s > 0),
    billing     text NOT NULL CHECK (billing IN ('received', 'sent', 'reconciled')),
    rules       jsonb NOT NULL DEFAULT '{}',
    retired_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE exchange_meters (
    exchange_id text NOT NULL REFERENCES exchanges (id),
    meter_id    text NOT NULL REFERENCES meters (id),
    side        text NOT NULL CHECK (side IN ('sent', 'received')),
    PRIMARY KEY (exchange_id, meter_id)
);
CREATE INDEX exchange_meters_meter ON exchange_meters (meter_id);

CREATE TABLE terms (
    exchange_id           text NOT NULL REFERENCES exchanges (id),
    valid_from            date NOT NULL,
    price                 numeric NOT NULL,
    receiver_avoided_cost numeric NOT NULL DEFAULT 0,
    receiver_avoided_co2  numeric NOT NULL DEFAULT 0,
    provider_avoided_cost numeric NOT NULL DEFAULT 0,
    provider_avoided_co2  numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (exchange_id, valid_from)
);

CREATE TABLE balances (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('heat', 'water', 'material')),
    loss        double precision NOT NULL CHECK (loss >= 0 AND loss < 1),
    window_s    integer NOT NULL CHECK (window_s > 0),
    retired_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE balance_meters (
    balance_id  text NOT NULL REFERENCES balances (id),
    meter_id    text NOT NULL REFERENCES meters (id),
    side        text NOT NULL CHECK (side IN ('in', 'out')),
    PRIMARY KEY (balance_id, meter_id)
);
CREATE INDEX balance_meters_meter ON balance_meters (meter_id);

-- Readings in canonical units, one row per (meter, instant), partitioned by UTC month.
-- No foreign key: ingest checks meters against the network it has loaded.
CREATE TABLE readings (
    meter_id    text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, ts)
) PARTITION BY RANGE (ts);

-- Create the month partition holding `at` unless it exists. Safe to call concurrently.
CREATE FUNCTION symbiont_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi   timestamptz := lo + interval '1 month';
    name text := 'readings_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('symbiont_ensure_partition'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                name, lo, hi);
        END IF;
    END IF;
    RETURN name;
END
$$;

CREATE TABLE rejections (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    partner_id  text,
    meter_id    text,
    reason      text NOT NULL,
    detail      text NOT NULL,
    payload     bytea,
    payload_sha bytea
);
CREATE INDEX rejections_received ON rejections (received_at);
CREATE INDEX rejections_sha ON rejections (payload_sha);
CREATE INDEX rejections_partner ON rejections (partner_id, received_at);

-- Messages, readings and rejections per partner and hour (the `rejections` alert rule).
CREATE TABLE ingest_counts (
    partner_id  text NOT NULL,
    hour        timestamptz NOT NULL,
    messages    bigint NOT NULL DEFAULT 0,
    readings    bigint NOT NULL DEFAULT 0,
    duplicates  bigint NOT NULL DEFAULT 0,
    rejected    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (partner_id, hour)
);

-- The rules engine's work list: (meter, window) pairs whose readings changed.
-- Ingest upserts and bumps `version`; a rules worker claims a row, computes, and deletes it
-- only if `version` is still the one it claimed (so data arriving meanwhile is not lost).
CREATE TABLE dirty_windows (
    meter_id     text NOT NULL,
    window_start timestamptz NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    marked_at    timestamptz NOT NULL DEFAULT now(),
    claimed_by   text,
    claimed_at   timestamptz,
    PRIMARY KEY (meter_id, window_start)
);
CREATE INDEX dirty_windows_unclaimed ON dirty_windows (marked_at) WHERE claimed_by IS NULL;
"""

DOWNGRADE = """
DROP TABLE dirty_windows;
DROP TABLE ingest_counts;
DROP TABLE rejections;
DROP FUNCTION symbiont_ensure_partition(timestamptz);
DROP TABLE readings;
DROP TABLE balance_meters;
DROP TABLE balances;
DROP TABLE terms;
DROP TABLE exchange_meters;
DROP TABLE exchanges;
DROP TABLE meters;
DROP TABLE partners;
DROP TABLE network;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
