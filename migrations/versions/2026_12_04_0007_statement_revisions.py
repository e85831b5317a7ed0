"""statement_revisions: revisions of issued statements, hash-chained, and document numbers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

from core.db import split_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- A month may be issued again as revision n+1 (the latest revision is the statement); every
-- revision stays, immutable, so a partner-month has one row per revision.
ALTER TABLE statements DROP CONSTRAINT statements_partner_id_month_key;
ALTER TABLE statements ADD CONSTRAINT statements_partner_month_revision_key
    UNIQUE (partner_id, month, revision);
ALTER TABLE statements ADD CONSTRAINT statements_revision_positive CHECK (revision >= 1);

-- reason: why this revision replaces the previous one (revisions after the first);
-- previous_hash: the content hash of the revision it replaces (revisions after the first);
-- incomplete_reason: why it was issued although its data was incomplete;
-- document_number: {network}-{yyyy}-{nnnnn}, unique (statements issued before numbering
-- have none).
ALTER TABLE statements ADD COLUMN reason text;
ALTER TABLE statements ADD COLUMN previous_hash text;
ALTER TABLE statements ADD COLUMN incomplete_reason text;
ALTER TABLE statements ADD COLUMN document_number text UNIQUE;
ALTER TABLE statements ADD CONSTRAINT statements_revision_chain CHECK (
    (revision = 1 AND previous_hash IS NULL AND reason IS NULL)
    OR (revision > 1 AND previous_hash IS NOT NULL AND reason IS NOT NULL));

-- Revision n+1 follows revision n of the same partner and month and names its content hash:
-- the revisions of a month form a chain nobody can break or fork.
CREATE FUNCTION symbiont_statement_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    before_hash text;
BEGIN
    IF NEW.revision = 1 THEN
        RETURN NEW;
    END IF;
    SELECT content_hash INTO before_hash FROM statements
        WHERE partner_id = NEW.partner_id AND month = NEW.month AND revision = NEW.revision - 1;
    IF before_hash IS NULL THEN
        RAISE EXCEPTION 'revision % of % for % follows no revision %', NEW.revision,
            NEW.partner_id, NEW.month, NEW.revision - 1
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF before_hash <> NEW.previous_hash THEN
        RAISE EXCEPTION 'revision % of % for % names % as the previous hash, not %',
            NEW.revision, NEW.partner_id, NEW.month, NEW.previous_hash, before_hash
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER statements_chain BEFORE INSERT ON statements
    FOR EACH ROW EXECUTE FUNCTION symbiont_statement_chain();

-- The last document number given out per network and year of issue. Taken and raised in the
-- transaction that stores the statements, so numbers have no gaps and no duplicates: a second
-- issuer waits for the first one's commit (or rollback) on this row.
CREATE TABLE document_numbers (
    network  text NOT NULL,
    year     integer NOT NULL,
    last     integer NOT NULL CHECK (last >= 1),
    PRIMARY KEY (network, year)
);
"""

DOWNGRADE = r"""
-- Issued revisions are never deleted: the schema before revisions cannot hold them.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM statements WHERE revision > 1) THEN
        RAISE EXCEPTION 'cannot downgrade: statements have revisions, which are kept for ever';
    END IF;
END
$$;
DROP TABLE document_numbers;
DROP TRIGGER statements_chain ON statements;
DROP FUNCTION symbiont_statement_chain();
ALTER TABLE statements DROP CONSTRAINT statements_revision_chain;
ALTER TABLE statements DROP COLUMN document_number;
ALTER TABLE statements DROP COLUMN incomplete_reason;
ALTER TABLE statements DROP COLUMN previous_hash;
ALTER TABLE statements DROP COLUMN reason;
ALTER TABLE statements DROP CONSTRAINT statements_revision_positive;
ALTER TABLE statements DROP CONSTRAINT statements_partner_month_revision_key;
ALTER TABLE statements ADD CONSTRAINT statements_partner_id_month_key UNIQUE (partner_id, month);
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
