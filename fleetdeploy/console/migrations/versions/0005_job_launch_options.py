"""Jobs record the launch's options: a --limit host pattern, --check and --diff.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("limit_pattern", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("check_mode", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("diff_mode", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("diff_mode")
        batch.drop_column("check_mode")
        batch.drop_column("limit_pattern")
