"""fhir_type_count: current resources per type; date search on one range index; type index ending in pk

Revision ID: 0008
Revises: 0007

An unfiltered search's total (``Observation?_summary=count``) reads one maintained row instead of counting a
million index entries. ``ix_fhir_date_high`` goes: without statistics SQLite preferred its open-ended
``high > ?`` range to the bounded range on ``low``. The type index ends in pk, so reading a type page by page
(Bulk export) is an index range instead of a sort of the whole type per page; (res_type, last_updated) is back
for _lastUpdated and _since.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_type_count",
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("current", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("res_type"),
    )
    op.execute("INSERT INTO fhir_type_count (res_type, current) "
               "SELECT res_type, count(*) FROM fhir_resource WHERE NOT deleted GROUP BY res_type")
    op.drop_index("ix_fhir_date_high", table_name="fhir_date")
    op.drop_index("ix_fhir_resource_type_current", table_name="fhir_resource")
    op.create_index("ix_fhir_resource_type_current", "fhir_resource", ["res_type", "deleted", "pk"])
    op.create_index("ix_fhir_resource_type_updated", "fhir_resource", ["res_type", "last_updated"])


def downgrade() -> None:
    op.drop_index("ix_fhir_resource_type_updated", table_name="fhir_resource")
    op.drop_index("ix_fhir_resource_type_current", table_name="fhir_resource")
    op.create_index("ix_fhir_resource_type_current", "fhir_resource", ["res_type", "deleted", "last_updated"])
    op.create_index("ix_fhir_date_high", "fhir_date", ["res_type", "param", "wide", "high", "low", "res_pk"])
    op.drop_table("fhir_type_count")
