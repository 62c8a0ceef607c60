"""jobs.published_at: when the job's id was last sent to the broker

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:00:00

The reconciler re-publishes a queued job only once its last publish is older than the broker's
visibility window; before, it re-published every job that waited in line longer than a lease.

A revision must not break the release before it: the column is nullable, and a job without it
(older jobs, and jobs the previous release inserts during the switch) counts as never published,
so the reconciler publishes it once more and records when.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("published_at")
