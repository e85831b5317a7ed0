"""rules: meter and exchange windows, reconciliations, alerts, events, outbox, deliveries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

from core.db import split_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Second stage of the rules engine's work list: exchange windows and reconciliation
-- components whose meter windows changed. Filled by the first stage, claimed FOR UPDATE
-- SKIP LOCKED by any worker, so each is computed from committed meter windows, once.
CREATE TABLE dirty_subjects (
    kind         text NOT NULL CHECK (kind IN ('exchange', 'component', 'meter')),
    subject      text NOT NULL,
    window_start timestamptz NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    marked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, subject, window_start)
);

-- One meter's quantity per window (its finest window), recomputed when readings change.
CREATE TABLE meter_windows (
    meter_id      text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    quantity      double precision,
    coverage      double precision NOT NULL,
    readings      integer NOT NULL,
    stuck         boolean NOT NULL DEFAULT false,
    negatives     integer NOT NULL DEFAULT 0,
    resets        integer NOT NULL DEFAULT 0,
    reset_events  jsonb,
    outliers      integer NOT NULL DEFAULT 0,
    first_ts      timestamptz,
    last_ts       timestamptz,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, window_start)
);

-- The reconciliation of each exchange and window.
CREATE TABLE exchange_windows (
    exchange_id   text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    sent          double precision,
    received      double precision,
    loss          double precision NOT NULL,
    imbalance     double precision,
    sigma         double precision,
    z             double precision,
    coverage      double precision NOT NULL,
    status        text NOT NULL CHECK (status IN ('ok', 'imbalance', 'incomplete', 'no_data')),
    reconciled_sent     double precision,
    reconciled_received double precision,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange_id, window_start)
);
CREATE INDEX exchange_windows_start ON exchange_windows (window_start);

-- Network reconciliation of one connected component of meters in one window.
CREATE TABLE reconciliations (
    id            bigserial PRIMARY KEY,
    component     text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    statistic     double precision,
    dof           integer NOT NULL,
    critical      double precision,
    passed        boolean,
    suspects      text[] NOT NULL DEFAULT '{}',
    computed_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (component, window_start)
);
CREATE INDEX reconciliations_start ON reconciliations (window_start);

CREATE TABLE reconciliation_meters (
    reconciliation_id bigint NOT NULL REFERENCES reconciliations (id) ON DELETE CASCADE,
    meter_id      text NOT NULL,
    measured      double precision,
    reconciled    double precision,
    adjustment    double precision,
    z             double precision,
    suspect       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (reconciliation_id, meter_id)
);

CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    fingerprint     text NOT NULL,
    rule            text NOT NULL,
    subject         text NOT NULL,
    subject_kind    text NOT NULL CHECK (subject_kind IN ('exchange', 'meter', 'partner')),
    severity        text NOT NULL CHECK (severity IN ('warning', 'critical')),
    status          text NOT NULL CHECK (status IN ('firing', 'resolved')),
    acknowledged_by text,
    acknowledged_at timestamptz,
    started_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    summary         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One firing alert per fingerprint: no duplicates, no storms.
CREATE UNIQUE INDEX alerts_one_firing ON alerts (fingerprint) WHERE status = 'firing';
CREATE INDEX alerts_status ON alerts (status, started_at DESC);
CREATE INDEX alerts_subject ON alerts (subject);

CREATE TABLE alert_events (
    id          bigserial PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts (id),
    kind        text NOT NULL CHECK (kind IN ('firing', 'resolved', 'acknowledged', 'updated')),
    at          timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL
);
CREATE INDEX alert_events_alert ON alert_events (alert_id);

-- Transactional outbox: written in the same transaction as the event it announces.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    event_key       text NOT NULL,
    channel         text NOT NULL,
    target          text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    delivered_at    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_key, channel, target)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';

-- Every delivery attempt, successful or not.
CREATE TABLE deliveries (
    id          bigserial PRIMARY KEY,
    outbox_id   bigint NOT NULL REFERENCES outbox (id),
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    ok          boolean NOT NULL,
    retryable   boolean NOT NULL,
    status_code integer,
    error       text,
    duration_ms double precision NOT NULL
);
CREATE INDEX deliveries_outbox ON deliveries (outbox_id);
"""

DOWNGRADE = """
DROP TABLE dirty_subjects;
DROP TABLE deliveries;
DROP TABLE outbox;
DROP TABLE alert_events;
DROP TABLE alerts;
DROP TABLE reconciliation_meters;
DROP TABLE reconciliations;
DROP TABLE exchange_windows;
DROP TABLE meter_windows;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
