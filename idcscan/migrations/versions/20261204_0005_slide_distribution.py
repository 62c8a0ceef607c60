"""slide_results: whether the slide's stain lies inside the training data's, and its figures

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 18:00:00

The worker compares each slide's H&E optical densities with the model's stain reference
(`core/stain.py`) and calls a slide that lies outside it `indeterminate`.

A revision must not break the release before it: every column is nullable, so the previous
release keeps inserting results without them, and results stored before have none (null: not
checked, which the API serves as such).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIGURES = (
    "haematoxylin_od",
    "haematoxylin_od_sd",
    "eosin_od",
    "eosin_od_sd",
    "far_tile_fraction",
    "stain_distance",
)


def upgrade() -> None:
    with op.batch_alter_table("slide_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("in_distribution", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("ood_reason", sa.Text(), nullable=True))
        for name in FIGURES:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slide_results", schema=None) as batch_op:
        for name in reversed(FIGURES):
            batch_op.drop_column(name)
        batch_op.drop_column("ood_reason")
        batch_op.drop_column("in_distribution")
