"""Tables of extracted radiomics features, after the OMOP CDM Medical Imaging extension (MI-CDM).

``image_feature`` has MI-CDM's IMAGE_FEATURE columns (Park et al., "Medical Imaging CDM", OHDSI) plus the
value, its unit and the provenance a federation needs to compare values across sites. The gateway has no OMOP
layer yet, so the foreign keys carry the gateway's own keys until the OMOP ETL maps them:

- ``person_id`` is the internal patient key (``patient.pk``), the one key a patient has across models;
- ``image_occurrence_id`` is the image series' key (``series.pk``): MI-CDM's IMAGE_OCCURRENCE is one row per
  series. The study, series and segmentation UIDs and the segment number are stored beside it so the ETL can
  join on UIDs whatever keys it assigns;
- ``image_feature_concept_id``, ``image_feature_type_concept_id``, ``anatomic_site_concept_id`` and
  ``unit_concept_id`` are 0 ("no matching concept") until the OMOP vocabulary holds radiomics concepts; the
  IBSI code and name, the site code and the UCUM unit are kept in the ``*_source_value`` columns;
- ``image_feature_event_field_concept_id``/``image_feature_event_id`` link a feature to the OMOP record it
  describes (e.g. a MEASUREMENT row); the value is stored inline here, so they stay 0/NULL until such a record
  exists.

``image_feature_region`` has one row per computed (series, segmentation segment, parameter hash, algorithm
version): it is what makes an extraction idempotent (a region with a row is done; its feature rows are written
in the same transaction) and records where its FHIR Observation went. ``image_feature_parameter_set`` keeps
the settings behind each parameter hash.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ImageFeatureParameterSet(SQLModel, table=True):
    __tablename__ = "image_feature_parameter_set"

    parameter_hash: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=128)
    settings_json: str = Field(sa_type=Text)  # the canonical JSON the hash is taken of
    created_at: datetime = Field(default_factory=_utcnow)


class ImageFeatureRegion(SQLModel, table=True):
    __tablename__ = "image_feature_region"
    __table_args__ = (
        UniqueConstraint("series_instance_uid", "segmentation_series_uid", "segment_number", "parameter_hash",
                         "alg_version", name="uq_image_feature_region_task"),
        Index("ix_image_feature_region_study", "study_instance_uid"),
    )

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(index=True)
    image_occurrence_id: int = Field(index=True)
    study_instance_uid: str = Field(max_length=64)
    series_instance_uid: str = Field(max_length=64, index=True)
    segmentation_series_uid: str = Field(max_length=64)
    segmentation_sop_instance_uid: str = Field(default="", max_length=64)
    segmentation_modality: str = Field(default="SEG", max_length=16)  # SEG or RTSTRUCT
    segment_number: int
    segment_label: str = Field(default="", sa_type=Text)
    tracking_uid: str = Field(default="", max_length=64)
    anatomic_site_source_value: str = Field(default="", max_length=255)
    parameter_hash: str = Field(max_length=64, foreign_key="image_feature_parameter_set.parameter_hash")
    alg_version: str = Field(max_length=32)
    alg_system: str = Field(max_length=255)
    alg_datetime: datetime = Field(default_factory=_utcnow)
    voxel_count: int = 0
    feature_count: int = 0
    job_id: str = Field(default="", max_length=32)
    observation_id: str | None = Field(default=None, max_length=64)


class ImageFeature(SQLModel, table=True):
    __tablename__ = "image_feature"
    __table_args__ = (
        UniqueConstraint("image_feature_region_id", "image_feature_source_key", name="uq_image_feature_region_key"),
        Index("ix_image_feature_series_hash", "series_instance_uid", "parameter_hash"),
    )

    # SQLite numbers rows only for an INTEGER primary key; BIGINT elsewhere (a row per feature adds up).
    image_feature_id: int | None = Field(default=None, primary_key=True,
                                         sa_type=BigInteger().with_variant(Integer(), "sqlite"))
    person_id: int = Field(index=True)
    image_occurrence_id: int = Field(index=True)
    image_feature_event_field_concept_id: int = 0
    image_feature_event_id: int | None = None
    image_feature_concept_id: int = 0
    image_feature_type_concept_id: int = 0
    anatomic_site_concept_id: int = 0
    alg_system: str = Field(max_length=255)
    alg_datetime: datetime = Field(default_factory=_utcnow)
    value_as_number: float | None = None  # NULL where IBSI leaves the feature undefined for the region (NaN)
    unit_concept_id: int = 0
    unit_source_value: str = Field(default="", max_length=64)  # UCUM
    # The IBSI identifier and name; the key (with the texture aggregation) is unique within a region.
    image_feature_source_value: str = Field(max_length=16)
    image_feature_source_name: str = Field(default="", sa_type=Text)
    image_feature_source_key: str = Field(max_length=128)
    feature_family: str = Field(default="", max_length=128)
    aggregation: str = Field(default="", max_length=32)
    aggregation_source_value: str = Field(default="", max_length=16)  # IBSI code of the aggregation method
    anatomic_site_source_value: str = Field(default="", max_length=255)
    parameter_hash: str = Field(max_length=64)
    image_feature_region_id: int = Field(foreign_key="image_feature_region.id", index=True)
    study_instance_uid: str = Field(max_length=64)
    series_instance_uid: str = Field(max_length=64)
    segmentation_series_uid: str = Field(max_length=64)
    segment_number: int
