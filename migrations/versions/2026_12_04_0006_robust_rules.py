"""robust_rules: a window whose computation failed is recorded as such, with its cause

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
"""

DOWNGRADE = """
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
