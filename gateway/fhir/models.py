"""FHIR resources in the gateway's database: JSON documents with their versions, plus search-index tables.

Each current resource version is one ``fhir_resource`` row (its JSON in ``content``); every version, the
current one included, is kept in ``fhir_resource_version`` for vread and history. What a search matches is
extracted at write time into one narrow table per search-parameter type, so a search is a few indexed lookups
joined on ``res_pk``, never a scan of JSON. Dates are stored as fixed-width UTC strings
(``YYYY-MM-DDTHH:MM:SS.ffffff``): they sort and compare the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Float, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class FhirResource(SQLModel, table=True):
    __tablename__ = "fhir_resource"
    __table_args__ = (
        UniqueConstraint("res_type", "res_id", name="uq_fhir_resource_type_id"),
        # Ends in pk: reading a type's current resources page by page (export) is a range, never a sort.
        Index("ix_fhir_resource_type_current", "res_type", "deleted", "pk"),
        Index("ix_fhir_resource_type_updated", "res_type", "last_updated"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    res_type: str = Field(max_length=64)
    res_id: str = Field(max_length=64)
    version_id: int = 1
    last_updated: str = Field(max_length=26)
    deleted: bool = False
    content: str = Field(default="", sa_type=Text)


class FhirResourceVersion(SQLModel, table=True):
    __tablename__ = "fhir_resource_version"

    res_pk: int = Field(foreign_key="fhir_resource.pk", primary_key=True)
    version_id: int = Field(primary_key=True)
    last_updated: str = Field(max_length=26)
    method: str = Field(max_length=8)  # POST, PUT or DELETE: the history Bundle's entry.request
    deleted: bool = False
    content: str = Field(default="", sa_type=Text)


class FhirToken(SQLModel, table=True):
    __tablename__ = "fhir_token"
    __table_args__ = (
        # res_pk last in the lookup indexes: a search's "res_pk of the rows matching" is read from the index alone.
        Index("ix_fhir_token_code", "res_type", "param", "code", "system", "res_pk"),
        Index("ix_fhir_token_system", "res_type", "param", "system"),
        Index("ix_fhir_token_text", "res_type", "param", "text"),
    )

    id: int | None = Field(default=None, primary_key=True)
    res_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    res_type: str = Field(max_length=64)
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, max_length=255)
    code: str | None = Field(default=None, max_length=255)
    # Coding.display / CodeableConcept.text / Identifier.type.text, normalised, for the :text modifier.
    text: str | None = Field(default=None, max_length=255)


class FhirString(SQLModel, table=True):
    __tablename__ = "fhir_string"
    __table_args__ = (
        Index("ix_fhir_string_norm", "res_type", "param", "value_norm", "res_pk"),
        Index("ix_fhir_string_exact", "res_type", "param", "value_exact"),
    )

    id: int | None = Field(default=None, primary_key=True)
    res_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    res_type: str = Field(max_length=64)
    param: str = Field(max_length=64)
    value_norm: str = Field(max_length=255)  # case- and accent-folded: default and :contains matching
    value_exact: str = Field(max_length=255)


class FhirDate(SQLModel, table=True):
    __tablename__ = "fhir_date"
    __table_args__ = (
        # One range index only: given a second one on high, SQLite (without statistics) may prefer an open-ended
        # "high > ?" range to the bounded range on low that search._date_sources builds.
        Index("ix_fhir_date_low", "res_type", "param", "wide", "low", "high", "res_pk"),
    )

    id: int | None = Field(default=None, primary_key=True)
    res_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    res_type: str = Field(max_length=64)
    param: str = Field(max_length=64)
    low: str = Field(max_length=26)  # both ends inclusive
    high: str = Field(max_length=26)
    # The value spans more than one UTC day (a period, a year, a month). Most do not, and for those a lower
    # bound on high bounds low too, so date ranges are bounded index ranges (search._date_sources).
    wide: bool = False


class FhirTokenDate(SQLModel, table=True):
    """A token and a date parameter of one resource indexed together (``[_token_date]`` in
    search_parameters.toml): one row per (coding, date) pair of the resource.

    "Observation?code=X&date=ge..&date=lt.." is then one bounded range of one index (the code's rows within the
    dates) instead of the intersection of every resource with the code and every resource in the range, which
    grows with the store (HAPI FHIR's "combo" search parameters answer the same need).
    """

    __tablename__ = "fhir_token_date"
    __table_args__ = (
        Index("ix_fhir_token_date_code", "res_type", "param", "code", "wide", "low", "high", "system", "res_pk"),
    )

    id: int | None = Field(default=None, primary_key=True)
    res_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    res_type: str = Field(max_length=64)
    param: str = Field(max_length=129)  # "<token parameter>+<date parameter>"
    system: str | None = Field(default=None, max_length=255)
    code: str | None = Field(default=None, max_length=255)
    low: str = Field(max_length=26)
    high: str = Field(max_length=26)
    wide: bool = False


class FhirReference(SQLModel, table=True):
    __tablename__ = "fhir_reference"
    __table_args__ = (
        Index("ix_fhir_reference_source", "res_type", "param", "target_type", "target_id", "res_pk"),
        Index("ix_fhir_reference_target", "target_type", "target_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    res_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    res_type: str = Field(max_length=64)
    param: str = Field(max_length=64)
    target_type: str | None = Field(default=None, max_length=64)
    target_id: str | None = Field(default=None, max_length=64)
    # A reference that is not Type/id on this server (absolute URL, canonical) is matched by its text.
    url: str | None = Field(default=None, sa_type=Text)


class FhirQuantity(SQLModel, table=True):
    __tablename__ = "fhir_quantity"
    __table_args__ = (Index("ix_fhir_quantity_value", "res_type", "param", "value", "res_pk"),)

    id: int | None = Field(default=None, primary_key=True)
    res_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    res_type: str = Field(max_length=64)
    param: str = Field(max_length=64)
    value: float = Field(sa_type=Float)
    system: str | None = Field(default=None, max_length=255)
    code: str | None = Field(default=None, max_length=255)
    unit: str | None = Field(default=None, max_length=255)


class FhirImagingLink(SQLModel, table=True):
    """Which DICOM study state each generated ImagingStudy reflects, so only changed studies are rebuilt."""

    __tablename__ = "fhir_imaging_link"

    study_instance_uid: str = Field(max_length=64, primary_key=True)
    study_updated_at: str = Field(default="", max_length=40)
    patient_res_id: str = Field(default="", max_length=64)


class FhirSyncState(SQLModel, table=True):
    """Named progress markers shared by all processes (one row each), e.g. how far the ImagingStudy sync got."""

    __tablename__ = "fhir_sync_state"

    name: str = Field(max_length=64, primary_key=True)
    value: str = Field(default="", max_length=64)


class FhirImagingPending(SQLModel, table=True):
    """Studies deleted by some process and not yet reflected in their ImagingStudy.

    A deleted study leaves no row whose updated_at a watermark scan could find, so the deleting process records
    it here and whichever process syncs next takes it.
    """

    __tablename__ = "fhir_imaging_pending"

    study_instance_uid: str = Field(max_length=64, primary_key=True)


class FhirTypeCount(SQLModel, table=True):
    """Current resources per type, kept by every write (all hold the FHIR write lock): an unfiltered search's
    total is one row, not a count of a million index entries."""

    __tablename__ = "fhir_type_count"

    res_type: str = Field(max_length=64, primary_key=True)
    current: int = 0
