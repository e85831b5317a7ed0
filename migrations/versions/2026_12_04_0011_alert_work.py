"""alert_work: silences of alert deliveries, the comment of an acknowledgement, and outbox rows
a silence holds back

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from alembic import op

from core.db import split_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- A silence mutes the deliveries of the alerts its matchers (rule, subject, partner; all must
-- match) select, from starts_at to ends_at. Expiring one sets ends_at to the moment it was
-- expired; it is kept, with who made and who expired it, as the record of what was muted.
CREATE TABLE silences (
    id          bigserial PRIMARY KEY,
    matchers    jsonb NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    comment     text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_by  text,
    expired_at  timestamptz,
    CHECK (ends_at >= starts_at),
    CHECK (jsonb_typeof(matchers) = 'array' AND jsonb_array_length(matchers) > 0)
);
CREATE INDEX silences_ends ON silences (ends_at);

ALTER TABLE alerts ADD COLUMN ack_comment text;

-- silenced: held back by a silence (silence_id), delivered after all if the alert's state
-- still matters to the receiver when no silence mutes it any more; suppressed: never sent.
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'delivered', 'failed', 'silenced', 'suppressed'));
ALTER TABLE outbox ADD COLUMN silence_id bigint REFERENCES silences (id);
ALTER TABLE outbox ADD COLUMN silenced_at timestamptz;
CREATE INDEX outbox_silenced ON outbox (id) WHERE status = 'silenced';
CREATE INDEX outbox_silence ON outbox (silence_id) WHERE silence_id IS NOT NULL;
-- What a receiver was told of an alert: the rows of one (channel, target, fingerprint).
CREATE INDEX outbox_alert_key ON outbox (channel, target, (payload #>> '{alert,fingerprint}'));
"""

DOWNGRADE = """
DROP INDEX outbox_alert_key;
DROP INDEX outbox_silence;
DROP INDEX outbox_silenced;
UPDATE outbox SET status = 'failed', last_error = 'muted by silence ' || silence_id
    WHERE status IN ('silenced', 'suppressed');
ALTER TABLE outbox DROP COLUMN silenced_at;
ALTER TABLE outbox DROP COLUMN silence_id;
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'delivered', 'failed'));
ALTER TABLE alerts DROP COLUMN ack_comment;
DROP TABLE silences;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
