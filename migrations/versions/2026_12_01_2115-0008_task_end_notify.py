"""task end notify: an outbox trigger announcing each task's end (PostgreSQL only)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:15:00.000000

Synchronous calls (EAS predict, SearchImageFigureCluster) wait by push: every terminal task
transition inserts an ``events`` row with its ``task_id`` (``pipeline.tasks.finalize``); this
trigger sends ``pg_notify('openimm_tasks', task_id)`` with it, delivered at commit, so the
worker's terminal write needs no extra round trip. SQLite has no NOTIFY: nothing to do there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION openimm_notify_task_end() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('openimm_tasks', NEW.task_id);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_notify_task_end AFTER INSERT ON events
        FOR EACH ROW WHEN (NEW.task_id IS NOT NULL)
        EXECUTE FUNCTION openimm_notify_task_end()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS events_notify_task_end ON events")
    op.execute("DROP FUNCTION IF EXISTS openimm_notify_task_end()")
