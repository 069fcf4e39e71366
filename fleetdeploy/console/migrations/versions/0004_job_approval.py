"""Jobs that wait for a second person's approval: when they expire, and who approved or rejected them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("approval_deadline", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("decided_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("decided_by")
        batch.drop_column("approval_deadline")
