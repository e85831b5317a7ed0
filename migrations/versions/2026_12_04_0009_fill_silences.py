"""fill_silences: have the rules engine compute the silences earlier versions left out

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Earlier versions computed, across a silence of a register or rate meter, only the windows next
to a reading: the windows in the middle were never written, and their quantity was missing
from statements. The engine now interpolates across every window of a silence; this marks,
once, the first missing window after each computed one (where a later window exists) so that
the engine walks those silences. What changes in an issued month then shows up as an
adjustment on the partner's next statement, as any late data does.
"""

from alembic import op

from core.db import split_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
INSERT INTO dirty_windows (meter_id, window_start)
SELECT mw.meter_id, mw.window_end
FROM meter_windows mw
JOIN meters m ON m.id = mw.meter_id
WHERE m.reading IN ('total', 'rate') AND m.retired_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM meter_windows n
                  WHERE n.meter_id = mw.meter_id AND n.window_start = mw.window_end)
  AND EXISTS (SELECT 1 FROM meter_windows l
              WHERE l.meter_id = mw.meter_id AND l.window_start > mw.window_end)
ORDER BY 1, 2
ON CONFLICT (meter_id, window_start)
DO UPDATE SET version = dirty_windows.version + 1, marked_at = now();
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Nothing to undo: the marks are work for the engine, and what it computed stays right."""
