"""incidents: alerts that share a cause grouped into incidents; when the rules saw an alert
fire and resolve beside when its condition began and ended; the drift statistic per window

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op

from core.db import split_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- An incident: the alerts of one cause (an exchange's imbalance and drift and the alerts on
-- its meters, overlapping in time). Open while any of its alerts fires.
CREATE TABLE incidents (
    id              bigserial PRIMARY KEY,
    subject         text NOT NULL,
    subject_kind    text NOT NULL CHECK (subject_kind IN ('exchange', 'meter', 'partner')),
    status          text NOT NULL CHECK (status IN ('open', 'resolved')),
    severity        text NOT NULL CHECK (severity IN ('warning', 'critical')),
    started_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incidents_status ON incidents (status, started_at DESC);

-- started_at/resolved_at: when the condition began and ended; these: when the rules saw it.
ALTER TABLE alerts ADD COLUMN detected_at timestamptz;
ALTER TABLE alerts ADD COLUMN resolve_detected_at timestamptz;
ALTER TABLE alerts ADD COLUMN incident_id bigint REFERENCES incidents (id);
CREATE INDEX alerts_incident ON alerts (incident_id);
UPDATE alerts SET detected_at = started_at, resolve_detected_at = resolved_at;

-- Alerts raised before incidents existed: one incident each.
ALTER TABLE incidents ADD COLUMN seed_alert bigint;
INSERT INTO incidents (subject, subject_kind, status, severity, started_at, resolved_at,
                       seed_alert)
SELECT subject, subject_kind, CASE status WHEN 'firing' THEN 'open' ELSE 'resolved' END,
       severity, started_at, resolved_at, id
FROM alerts ORDER BY id;
UPDATE alerts a SET incident_id = i.id FROM incidents i WHERE i.seed_alert = a.id;
ALTER TABLE incidents DROP COLUMN seed_alert;

-- The drift statistic after each exchange window, so that the next pass (live or backfill)
-- carries it on exactly.
CREATE TABLE drift_states (
    exchange_id     text NOT NULL,
    window_start    timestamptz NOT NULL,
    state           jsonb NOT NULL,
    PRIMARY KEY (exchange_id, window_start)
);
"""

DOWNGRADE = """
DROP TABLE drift_states;
DROP INDEX alerts_incident;
ALTER TABLE alerts DROP COLUMN incident_id;
ALTER TABLE alerts DROP COLUMN resolve_detected_at;
ALTER TABLE alerts DROP COLUMN detected_at;
DROP TABLE incidents;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
