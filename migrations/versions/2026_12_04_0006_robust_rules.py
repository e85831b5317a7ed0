"""robust_rules: a window whose computation failed is recorded as such, with its cause
(meter windows, exchange windows and network reconciliations)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from alembic import op

from core.db import split_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- A window the rules engine could not compute (a stored value its arithmetic cannot take)
-- is kept with status 'error' and the cause, instead of stopping every other window.
ALTER TABLE exchange_windows DROP CONSTRAINT exchange_windows_status_check;
ALTER TABLE exchange_windows ADD CONSTRAINT exchange_windows_status_check
    CHECK (status IN ('ok', 'imbalance', 'incomplete', 'no_data', 'error'));
ALTER TABLE exchange_windows ADD COLUMN error text;
ALTER TABLE meter_windows ADD COLUMN error text;
ALTER TABLE reconciliations ADD COLUMN error text;
-- The rules_error alert looks up a subject's failed windows on every pass: only those rows.
CREATE INDEX exchange_windows_failed ON exchange_windows (exchange_id, window_start)
    WHERE status = 'error';
CREATE INDEX meter_windows_failed ON meter_windows (meter_id, window_start)
    WHERE error IS NOT NULL;
CREATE INDEX reconciliations_failed ON reconciliations (component, window_start)
    WHERE error IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX reconciliations_failed;
DROP INDEX meter_windows_failed;
DROP INDEX exchange_windows_failed;
DELETE FROM reconciliations WHERE error IS NOT NULL;
ALTER TABLE reconciliations DROP COLUMN error;
ALTER TABLE meter_windows DROP COLUMN error;
ALTER TABLE exchange_windows DROP COLUMN error;
DELETE FROM exchange_windows WHERE status = 'error';
ALTER TABLE exchange_windows DROP CONSTRAINT exchange_windows_status_check;
ALTER TABLE exchange_windows ADD CONSTRAINT exchange_windows_status_check
    CHECK (status IN ('ok', 'imbalance', 'incomplete', 'no_data'));
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
