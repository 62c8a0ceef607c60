"""models.variants, slide_results.model_variant: which precision of a model scored a slide

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:00:00

A model may ship INT8 (CPU) and FP16 (GPU) variants beside its FP32 file (`core/variants.py`).
`models register` records the ones present in `models.variants` (precision -> location); the
worker runs the variant of its execution provider and records it in `slide_results.model_variant`.

A revision must not break the release before it: both columns are nullable, so the previous
release keeps registering models and inserting results without them (null: FP32, the only
precision it knew).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: SQLite's batch copy of `models` would drop a table that
    # jobs and results reference. SQLite adds and (since 3.35) drops a column in place.
    op.add_column("models", sa.Column("variants", sa.JSON(), nullable=True))
    op.add_column("slide_results", sa.Column("model_variant", sa.String(length=8), nullable=True))


def downgrade() -> None:
    op.drop_column("slide_results", "model_variant")
    op.drop_column("models", "variants")
