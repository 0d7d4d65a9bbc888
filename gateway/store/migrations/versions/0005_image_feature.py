"""image_feature: radiomics features after MI-CDM IMAGE_FEATURE, the computed regions and parameter sets

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_feature_parameter_set",
        sa.Column("parameter_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("parameter_hash"),
    )
    op.create_table(
        "image_feature_region",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("image_occurrence_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("segmentation_series_uid", sa.String(length=64), nullable=False),
        sa.Column("segmentation_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("segmentation_modality", sa.String(length=16), nullable=False),
        sa.Column("segment_number", sa.Integer(), nullable=False),
        sa.Column("segment_label", sa.Text(), nullable=False),
        sa.Column("tracking_uid", sa.String(length=64), nullable=False),
        sa.Column("anatomic_site_source_value", sa.String(length=255), nullable=False),
        sa.Column("parameter_hash", sa.String(length=64), nullable=False),
        sa.Column("alg_version", sa.String(length=32), nullable=False),
        sa.Column("alg_system", sa.String(length=255), nullable=False),
        sa.Column("alg_datetime", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voxel_count", sa.Integer(), nullable=False),
        sa.Column("feature_count", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("observation_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["parameter_hash"], ["image_feature_parameter_set.parameter_hash"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_instance_uid", "segmentation_series_uid", "segment_number", "parameter_hash",
                            "alg_version", name="uq_image_feature_region_task"),
    )
    op.create_index("ix_image_feature_region_study", "image_feature_region", ["study_instance_uid"])
    op.create_index("ix_image_feature_region_person_id", "image_feature_region", ["person_id"])
    op.create_index("ix_image_feature_region_image_occurrence_id", "image_feature_region", ["image_occurrence_id"])
    op.create_index("ix_image_feature_region_series_instance_uid", "image_feature_region", ["series_instance_uid"])
    op.create_table(
        "image_feature",
        sa.Column("image_feature_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("image_occurrence_id", sa.Integer(), nullable=False),
        sa.Column("image_feature_event_field_concept_id", sa.Integer(), nullable=False),
        sa.Column("image_feature_event_id", sa.Integer(), nullable=True),
        sa.Column("image_feature_concept_id", sa.Integer(), nullable=False),
        sa.Column("image_feature_type_concept_id", sa.Integer(), nullable=False),
        sa.Column("anatomic_site_concept_id", sa.Integer(), nullable=False),
        sa.Column("alg_system", sa.String(length=255), nullable=False),
        sa.Column("alg_datetime", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value_as_number", sa.Float(), nullable=True),
        sa.Column("unit_concept_id", sa.Integer(), nullable=False),
        sa.Column("unit_source_value", sa.String(length=64), nullable=False),
        sa.Column("image_feature_source_value", sa.String(length=16), nullable=False),
        sa.Column("image_feature_source_name", sa.Text(), nullable=False),
        sa.Column("image_feature_source_key", sa.String(length=128), nullable=False),
        sa.Column("feature_family", sa.String(length=128), nullable=False),
        sa.Column("aggregation", sa.String(length=32), nullable=False),
        sa.Column("aggregation_source_value", sa.String(length=16), nullable=False),
        sa.Column("anatomic_site_source_value", sa.String(length=255), nullable=False),
        sa.Column("parameter_hash", sa.String(length=64), nullable=False),
        sa.Column("image_feature_region_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("segmentation_series_uid", sa.String(length=64), nullable=False),
        sa.Column("segment_number", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["image_feature_region_id"], ["image_feature_region.id"]),
        sa.PrimaryKeyConstraint("image_feature_id"),
        sa.UniqueConstraint("image_feature_region_id", "image_feature_source_key",
                            name="uq_image_feature_region_key"),
    )
    op.create_index("ix_image_feature_series_hash", "image_feature", ["series_instance_uid", "parameter_hash"])
    op.create_index("ix_image_feature_person_id", "image_feature", ["person_id"])
    op.create_index("ix_image_feature_image_occurrence_id", "image_feature", ["image_occurrence_id"])
    op.create_index("ix_image_feature_image_feature_region_id", "image_feature", ["image_feature_region_id"])


def downgrade() -> None:
    op.drop_table("image_feature")
    op.drop_table("image_feature_region")
    op.drop_table("image_feature_parameter_set")
