"""tokens: API bearer tokens, stored hashed

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op

from core.db import split_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- A token is shown once when created ("sym_<id>_<secret>"); only the SHA-256 of the whole
-- token is kept.  The id in the token finds the row; the hash is compared in constant time.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    role         text NOT NULL CHECK (role IN ('admin', 'operator', 'partner', 'integration')),
    partner_id   text,
    name         text NOT NULL DEFAULT '',
    token_hash   bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK ((role = 'partner') = (partner_id IS NOT NULL))
);

-- Live views: one NOTIFY per changed meter reading batch already exists (symbiont_dirty);
-- the network's own change is announced here so every API process reloads it.
CREATE FUNCTION symbiont_network_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('symbiont_network', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER network_changed AFTER INSERT OR UPDATE OR DELETE ON network
    FOR EACH STATEMENT EXECUTE FUNCTION symbiont_network_changed();
"""

DOWNGRADE = """
DROP TRIGGER network_changed ON network;
DROP FUNCTION symbiont_network_changed();
DROP TABLE api_tokens;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
