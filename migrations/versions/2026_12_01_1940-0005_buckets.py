"""buckets: object-store bucket owners and grants

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pipeline.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "buckets",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("create_time", pipeline.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_buckets")),
    )
    with op.batch_alter_table("buckets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_buckets_owner"), ["owner"], unique=False)
    op.create_table(
        "bucket_grants",
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("grantee", sa.String(length=128), nullable=False),
        sa.Column("access", sa.String(length=8), nullable=False),
        sa.Column("create_time", pipeline.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bucket"],
            ["buckets.name"],
            name=op.f("fk_bucket_grants_bucket_buckets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bucket", "grantee", name=op.f("pk_bucket_grants")),
    )


def downgrade() -> None:
    op.drop_table("bucket_grants")
    with op.batch_alter_table("buckets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_buckets_owner"))
    op.drop_table("buckets")
