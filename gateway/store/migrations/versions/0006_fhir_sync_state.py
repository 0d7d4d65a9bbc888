"""fhir_sync_state: the ImagingStudy sync's shared watermark; fhir_imaging_pending: deleted studies to reflect

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_sync_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "fhir_imaging_pending",
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )


def downgrade() -> None:
    op.drop_table("fhir_imaging_pending")
    op.drop_table("fhir_sync_state")
