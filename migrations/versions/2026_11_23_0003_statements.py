"""statements: issued statements, immutable, with their content hash and renderings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

from core.db import split_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- An issued statement never changes: the document is kept as the exact JSON text whose
-- SHA-256 is content_hash, with the CSV and PDF rendered from it at issue time.
CREATE TABLE statements (
    id            bigserial PRIMARY KEY,
    partner_id    text NOT NULL,
    month         text NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    revision      integer NOT NULL DEFAULT 1,
    issued_at     timestamptz NOT NULL,
    document      text NOT NULL,
    content_hash  text NOT NULL,
    csv           bytea NOT NULL,
    pdf           bytea NOT NULL,
    UNIQUE (partner_id, month)
);

CREATE FUNCTION symbiont_statement_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'issued statements are immutable'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION 'issued statement % of % for % is immutable', OLD.id, OLD.partner_id,
        OLD.month USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER statements_immutable BEFORE UPDATE OR DELETE ON statements
    FOR EACH ROW EXECUTE FUNCTION symbiont_statement_immutable();

CREATE TRIGGER statements_no_truncate BEFORE TRUNCATE ON statements
    FOR EACH STATEMENT EXECUTE FUNCTION symbiont_statement_immutable();
"""

DOWNGRADE = """
DROP TABLE statements;
DROP FUNCTION symbiont_statement_immutable();
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
