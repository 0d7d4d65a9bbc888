"""fhir search indexes: res_pk in the lookup indexes, fhir_date.wide for bounded date ranges, current-type index

Revision ID: 0007
Revises: 0006

Searches are answered from the index tables alone when every parameter is a positive match, so the lookup
indexes carry res_pk (index-only reads). A date value within one UTC day (not ``wide``) lets a lower bound on
its end bound its start as well, so a date range is a bounded range of (res_type, param, wide, low).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_NEW = [
    ("ix_fhir_token_code", "fhir_token", ["res_type", "param", "code", "system", "res_pk"]),
    ("ix_fhir_string_norm", "fhir_string", ["res_type", "param", "value_norm", "res_pk"]),
    ("ix_fhir_date_low", "fhir_date", ["res_type", "param", "wide", "low", "high", "res_pk"]),
    ("ix_fhir_date_high", "fhir_date", ["res_type", "param", "wide", "high", "low", "res_pk"]),
    ("ix_fhir_reference_source", "fhir_reference", ["res_type", "param", "target_type", "target_id", "res_pk"]),
    ("ix_fhir_quantity_value", "fhir_quantity", ["res_type", "param", "value", "res_pk"]),
]
_OLD = [
    ("ix_fhir_token_code", "fhir_token", ["res_type", "param", "code", "system"]),
    ("ix_fhir_string_norm", "fhir_string", ["res_type", "param", "value_norm"]),
    ("ix_fhir_date_low", "fhir_date", ["res_type", "param", "low"]),
    ("ix_fhir_date_high", "fhir_date", ["res_type", "param", "high"]),
    ("ix_fhir_reference_source", "fhir_reference", ["res_type", "param", "target_type", "target_id"]),
    ("ix_fhir_quantity_value", "fhir_quantity", ["res_type", "param", "value"]),
]


def upgrade() -> None:
    with op.batch_alter_table("fhir_date") as batch:
        batch.add_column(sa.Column("wide", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE fhir_date SET wide = (substr(low, 1, 10) <> substr(high, 1, 10))")
    for name, table, columns in _NEW:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns)
    op.drop_index("ix_fhir_resource_type_updated", table_name="fhir_resource")
    op.create_index("ix_fhir_resource_type_current", "fhir_resource", ["res_type", "deleted", "last_updated"])


def downgrade() -> None:
    op.drop_index("ix_fhir_resource_type_current", table_name="fhir_resource")
    op.create_index("ix_fhir_resource_type_updated", "fhir_resource", ["res_type", "last_updated"])
    for name, table, columns in _OLD:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns)
    with op.batch_alter_table("fhir_date") as batch:
        batch.drop_column("wide")
