"""fhir: FHIR resources, their versions and search-index tables; ImagingStudy links to DICOM studies

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEX_COLUMNS = {
    "fhir_token": [
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.Column("text", sa.String(length=255), nullable=True),
    ],
    "fhir_string": [
        sa.Column("value_norm", sa.String(length=255), nullable=False),
        sa.Column("value_exact", sa.String(length=255), nullable=False),
    ],
    "fhir_date": [
        sa.Column("low", sa.String(length=26), nullable=False),
        sa.Column("high", sa.String(length=26), nullable=False),
    ],
    "fhir_reference": [
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
    ],
    "fhir_quantity": [
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.Column("unit", sa.String(length=255), nullable=True),
    ],
}

_INDEXES = [
    ("ix_fhir_token_code", "fhir_token", ["res_type", "param", "code", "system"]),
    ("ix_fhir_token_system", "fhir_token", ["res_type", "param", "system"]),
    ("ix_fhir_token_text", "fhir_token", ["res_type", "param", "text"]),
    ("ix_fhir_string_norm", "fhir_string", ["res_type", "param", "value_norm"]),
    ("ix_fhir_string_exact", "fhir_string", ["res_type", "param", "value_exact"]),
    ("ix_fhir_date_low", "fhir_date", ["res_type", "param", "low"]),
    ("ix_fhir_date_high", "fhir_date", ["res_type", "param", "high"]),
    ("ix_fhir_reference_source", "fhir_reference", ["res_type", "param", "target_type", "target_id"]),
    ("ix_fhir_reference_target", "fhir_reference", ["target_type", "target_id"]),
    ("ix_fhir_quantity_value", "fhir_quantity", ["res_type", "param", "value"]),
]

_PATTERN_INDEXES = [
    ("ix_fhir_string_norm_pattern", "fhir_string", "value_norm"),
    ("ix_fhir_token_text_pattern", "fhir_token", "text"),
]


def upgrade() -> None:
    op.create_table(
        "fhir_resource",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.String(length=26), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("res_type", "res_id", name="uq_fhir_resource_type_id"),
    )
    op.create_index("ix_fhir_resource_type_updated", "fhir_resource", ["res_type", "last_updated"])
    op.create_table(
        "fhir_resource_version",
        sa.Column("res_pk", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.String(length=26), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["res_pk"], ["fhir_resource.pk"]),
        sa.PrimaryKeyConstraint("res_pk", "version_id"),
    )
    for table, columns in _INDEX_COLUMNS.items():
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("res_pk", sa.Integer(), nullable=False),
            sa.Column("res_type", sa.String(length=64), nullable=False),
            sa.Column("param", sa.String(length=64), nullable=False),
            *columns,
            sa.ForeignKeyConstraint(["res_pk"], ["fhir_resource.pk"]),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(f"ix_{table}_res_pk", table, ["res_pk"])
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns)
    if op.get_bind().dialect.name == "postgresql":
        # Prefix matching (string search, token :text) is LIKE 'abc%'; under a non-C collation PostgreSQL can
        # use a b-tree for it only with the pattern operator class. SQLite uses the plain index (case-sensitive
        # LIKE is on).
        for name, table, column in _PATTERN_INDEXES:
            op.create_index(name, table, ["res_type", "param", column],
                            postgresql_ops={column: "varchar_pattern_ops"})
    op.create_table(
        "fhir_imaging_link",
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_updated_at", sa.String(length=40), nullable=False),
        sa.Column("patient_res_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )


def downgrade() -> None:
    op.drop_table("fhir_imaging_link")
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _ in _PATTERN_INDEXES:
            op.drop_index(name, table_name=table)
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
    for table in reversed(list(_INDEX_COLUMNS)):
        op.drop_index(f"ix_{table}_res_pk", table_name=table)
        op.drop_table(table)
    op.drop_table("fhir_resource_version")
    op.drop_index("ix_fhir_resource_type_updated", table_name="fhir_resource")
    op.drop_table("fhir_resource")
