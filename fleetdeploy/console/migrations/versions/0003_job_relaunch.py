"""Jobs record the job they relaunch and the hosts a retry of the failed hosts was limited to.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("relaunch_of", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("limit_hosts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("limit_hosts")
        batch.drop_column("relaunch_of")
