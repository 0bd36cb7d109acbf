"""attempts.submit_claimed_at: the API accepts an experiment, the reconciler submits it (a lease per attempt)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("submit_claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("submit_claimed_at")
