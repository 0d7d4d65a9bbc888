"""The SQL index of stored DICOM instances.

What QIDO-RS and C-FIND match on and return is precomputed at ingest (normalised match columns, counts,
the modalities of a study, each level's attributes as DICOM JSON), so an answer is one indexed query plus
serialisation, however many results it has. Schema changes go through Alembic (``migrations/``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class Patient(SQLModel, table=True):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_identity"),)

    pk: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(default="", max_length=64)
    issuer: str = Field(default="", max_length=64)
    patient_name: str = Field(default="", sa_type=Text)
    patient_name_match: str = Field(default="", sa_type=Text, index=True)
    patient_birth_date: str = Field(default="", max_length=8)
    patient_sex: str = Field(default="", max_length=16)
    num_studies: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class Study(SQLModel, table=True):
    __tablename__ = "study"
    __table_args__ = (
        Index("ix_study_patient_id", "patient_id"),
        Index("ix_study_date_time", "study_date", "study_time"),
        Index("ix_study_accession", "accession_number"),
        Index("ix_study_name_match", "patient_name_match"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, unique=True)
    patient_pk: int = Field(foreign_key="patient.pk", index=True)
    # Patient attributes are repeated here so a study search never needs a join.
    patient_id: str = Field(default="", max_length=64)
    issuer: str = Field(default="", max_length=64)
    patient_name: str = Field(default="", sa_type=Text)
    patient_name_match: str = Field(default="", sa_type=Text)
    patient_name_fuzzy: str = Field(default="", sa_type=Text)
    patient_birth_date: str = Field(default="", max_length=8)
    patient_sex: str = Field(default="", max_length=16)
    study_date: str = Field(default="", max_length=8)
    study_time: str = Field(default="", max_length=13)
    accession_number: str = Field(default="", max_length=64)
    study_id: str = Field(default="", max_length=64)
    study_description: str = Field(default="", sa_type=Text)
    referring_physician_match: str = Field(default="", sa_type=Text)
    modalities: str = Field(default="", max_length=255)  # backslash-separated, sorted
    num_series: int = 0
    num_instances: int = 0
    attributes_json: str = Field(default="{}", sa_type=Text)
    # The default QIDO-RS return attributes as JSON members ('"00100020":{...},...'), spliced into answers.
    qido_json: str = Field(default="", sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)


class StudyModality(SQLModel, table=True):
    """One row per (study, modality): ModalitiesInStudy matching as an indexed lookup, not a substring scan."""

    __tablename__ = "study_modality"

    study_pk: int = Field(foreign_key="study.pk", primary_key=True)
    modality: str = Field(max_length=16, primary_key=True, index=True)


class Series(SQLModel, table=True):
    __tablename__ = "series"
    __table_args__ = (Index("ix_series_study_number", "study_pk", "series_number"),)

    pk: int | None = Field(default=None, primary_key=True)
    series_instance_uid: str = Field(max_length=64, unique=True)
    study_pk: int = Field(foreign_key="study.pk")
    modality: str = Field(default="", max_length=16, index=True)
    series_number: int | None = None
    series_description: str = Field(default="", sa_type=Text)
    body_part_examined: str = Field(default="", max_length=64)
    series_date: str = Field(default="", max_length=8)
    pps_start_date: str = Field(default="", max_length=8)
    pps_start_time: str = Field(default="", max_length=13)
    num_instances: int = 0
    attributes_json: str = Field(default="{}", sa_type=Text)
    qido_json: str = Field(default="", sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow)


class Instance(SQLModel, table=True):
    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_series_number", "series_pk", "instance_number"),)

    pk: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(max_length=64, unique=True)
    series_pk: int = Field(foreign_key="series.pk")
    study_pk: int = Field(foreign_key="study.pk", index=True)
    sop_class_uid: str = Field(default="", max_length=64, index=True)
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    number_of_frames: int | None = None
    transfer_syntax_uid: str = Field(default="", max_length=64)
    file_path: str = Field(sa_type=Text)  # relative to the storage root
    file_size: int = Field(default=0, sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    metadata_json: str = Field(default="{}", sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    """A long-running task (a PACS pull, a feature extraction, an export) and its progress.

    The row is the job's only state: any process can report on it, and a job whose process died is found by
    its owner and resumed (every job kind is idempotent, so resuming means running again).
    """

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_state_created", "state", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=64, index=True)
    state: str = Field(max_length=16)
    params_json: str = Field(default="{}", sa_type=Text)
    result_json: str = Field(default="", sa_type=Text)
    error: str = Field(default="", sa_type=Text)
    done: int = 0
    total: int | None = None
    message: str = Field(default="", sa_type=Text)
    # host:pid of the process running it, so a restart can tell a live job from an orphan.
    owner: str = Field(default="", max_length=128)
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
