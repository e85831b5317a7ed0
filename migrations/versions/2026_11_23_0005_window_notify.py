"""window_notify: announce which exchanges' windows changed

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from alembic import op

from core.db import split_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Every statement that writes exchange windows announces, at its commit, the exchanges it
-- touched (space-separated ids; '*' when too many for one notification).  API processes keep
-- serialized window histories in memory and drop an exchange's on this notice, whoever wrote
-- the rows: the rules engine, an operator's SQL, a restore.
CREATE FUNCTION symbiont_exchange_windows_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT string_agg(DISTINCT exchange_id, ' ') INTO ids FROM old_rows;
    ELSE
        SELECT string_agg(DISTINCT exchange_id, ' ') INTO ids FROM new_rows;
    END IF;
    IF ids IS NOT NULL THEN
        IF length(ids) > 7000 THEN
            ids := '*';
        END IF;
        PERFORM pg_notify('symbiont_exchange_windows', ids);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER exchange_windows_inserted AFTER INSERT ON exchange_windows
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symbiont_exchange_windows_changed();
CREATE TRIGGER exchange_windows_updated AFTER UPDATE ON exchange_windows
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symbiont_exchange_windows_changed();
CREATE TRIGGER exchange_windows_deleted AFTER DELETE ON exchange_windows
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symbiont_exchange_windows_changed();

-- TRUNCATE has no transition table: everything changed.
CREATE FUNCTION symbiont_exchange_windows_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('symbiont_exchange_windows', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER exchange_windows_truncated AFTER TRUNCATE ON exchange_windows
    FOR EACH STATEMENT EXECUTE FUNCTION symbiont_exchange_windows_truncated();
"""

DOWNGRADE = """
DROP TRIGGER exchange_windows_truncated ON exchange_windows;
DROP TRIGGER exchange_windows_deleted ON exchange_windows;
DROP TRIGGER exchange_windows_updated ON exchange_windows;
DROP TRIGGER exchange_windows_inserted ON exchange_windows;
DROP FUNCTION symbiont_exchange_windows_truncated();
DROP FUNCTION symbiont_exchange_windows_changed();
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
