"""replay keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pipeline.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replay_keys",
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("expires_at", pipeline.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_replay_keys")),
    )
    op.create_index(op.f("ix_replay_keys_expires_at"), "replay_keys", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_replay_keys_expires_at"), table_name="replay_keys")
    op.drop_table("replay_keys")
