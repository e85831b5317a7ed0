"""sparkplug: Sparkplug B births kept across restarts, and meters' presence

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

``sparkplug_births`` holds the last birth (NBIRTH, or DBIRTH of a device) of every Sparkplug B
edge node ingest follows: its metric names, aliases, datatypes and units, so that a restarted
ingest still understands data that names metrics by alias. ``meter_presence`` holds whether a
meter's Sparkplug source is online: a birth sets it, a death (NDEATH, DDEATH) clears it.
"""

from alembic import op

from core.db import split_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE sparkplug_births (
    group_id    text NOT NULL,
    node_id     text NOT NULL,
    device_id   text NOT NULL DEFAULT '',   -- '' for the node's own birth
    bd_seq      bigint,
    -- [[alias or null, name, datatype, engUnit or null], ...]
    metrics     jsonb NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, node_id, device_id)
);

CREATE TABLE meter_presence (
    meter_id    text PRIMARY KEY,
    online      boolean NOT NULL,
    changed_at  timestamptz NOT NULL,
    cause       text NOT NULL CHECK (cause IN ('NBIRTH', 'DBIRTH', 'NDEATH', 'DDEATH'))
);
"""

DOWNGRADE = r"""
DROP TABLE meter_presence;
DROP TABLE sparkplug_births;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
