"""jobs.request_sha256: the fingerprint of a submission, checked when its Idempotency-Key is reused

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00

A revision must not break the release before it: old workers and API processes keep running
against the new schema during a rolling upgrade. Add columns nullable or with a server default;
drop nothing that the previous release still reads.

The column is nullable: jobs from before it have no fingerprint, and the previous release inserts
jobs without one during the switch; a key of such a job is replayed as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("request_sha256")
